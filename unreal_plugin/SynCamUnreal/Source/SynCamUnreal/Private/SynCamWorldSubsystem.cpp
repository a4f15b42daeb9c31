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
	if (TActorIterator<ASynCamFrameSync>(&InWorld))
	{
		return; // one is already there (placed in the level or left from a previous begin-play)
	}
	FActorSpawnParameters Params;
	// UnrealCV's vbp finds objects by name: give the actor a fixed one.
	Params.Name = FName(TEXT("SynCamFrameSync"));
	Params.NameMode = FActorSpawnParameters::ESpawnActorNameMode::Requested;
	Params.SpawnCollisionHandlingOverride = ESpawnActorCollisionHandlingMethod::AlwaysSpawn;
	Params.ObjectFlags |= RF_Transient;
	InWorld.SpawnActor<ASynCamFrameSync>(ASynCamFrameSync::StaticClass(), FTransform::Identity, Params);
}
