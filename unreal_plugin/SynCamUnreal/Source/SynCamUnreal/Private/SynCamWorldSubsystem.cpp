#include "SynCamWorldSubsystem.h"

#include "EngineUtils.h"
#include "SynCamFrameSync.h"

bool USynCamWorldSubsystem::DoesSupportWorldType(const EWorldType::Type WorldType) const
{
	// Only worlds that play: a packaged game (-game) and Play-in-Editor.
	return WorldType == EWorldType::Game || WorldType == EWorldType::PIE;
}

void USynCamWorldSubsystem::OnWorldBeginPlay(UWorld& InWorld)
{
	Super::OnWorldBeginPlay(InWorld);
	for (TActorIterator<ASynCamFrameSync> It(&InWorld); It; ++It)
	{
		return; // one is already there
	}
	FActorSpawnParameters Params;
	// UnrealCV's vbp finds objects by name: give the actor a fixed one.
	Params.Name = FName(TEXT("SynCamFrameSync"));
	Params.NameMode = FActorSpawnParameters::ESpawnActorNameMode::Requested;
	Params.SpawnCollisionHandlingOverride = ESpawnActorCollisionHandlingMethod::AlwaysSpawn;
	Params.ObjectFlags |= RF_Transient;
	InWorld.SpawnActor<ASynCamFrameSync>(ASynCamFrameSync::StaticClass(), FTransform::Identity, Params);
}
