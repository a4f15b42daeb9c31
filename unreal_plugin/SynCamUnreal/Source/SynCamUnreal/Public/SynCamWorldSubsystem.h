// Spawns the SynCamFrameSync actor in every game world, so `vbp SynCamFrameSync ...` works after any
// `vset /action/game/level` without placing anything in the levels.
#pragma once

#include "CoreMinimal.h"
#include "Subsystems/WorldSubsystem.h"
#include "SynCamWorldSubsystem.generated.h"

UCLASS()
class SYNCAMUNREAL_API USynCamWorldSubsystem : public UWorldSubsystem
{
	GENERATED_BODY()

public:
	virtual void OnWorldBeginPlay(UWorld& InWorld) override;

protected:
	virtual bool DoesSupportWorldType(const EWorldType::Type WorldType) const override;
};
