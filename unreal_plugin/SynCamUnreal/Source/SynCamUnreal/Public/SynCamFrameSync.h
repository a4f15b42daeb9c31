// SynCam frame-sync actor: Blueprint-callable functions that UnrealCV's `vbp` command reaches by the
// actor's name ("SynCamFrameSync", spawned in every game world by USynCamWorldSubsystem).
//
// UnrealCV has no frame clock. For synchronized multi-camera capture SynCam pauses the world and, for
// every frame, sets each subject's transform and animation time explicitly through these functions,
// poses all cameras and captures them in one `vbatch`. Every function returns what the engine now
// holds, so the Python side can check it against what it asked for.
#pragma once

#include "CoreMinimal.h"
#include "GameFramework/Actor.h"
#include "SynCamFrameSync.generated.h"

UCLASS(NotPlaceable, Transient)
class SYNCAMUNREAL_API ASynCamFrameSync : public AActor
{
	GENERATED_BODY()

public:
	ASynCamFrameSync();

	/** Plugin version, e.g. "1.0.0"; SynCam calls it to detect the plugin. */
	UFUNCTION(BlueprintCallable, Category = "SynCam")
	FString GetSynCamVersion() const;

	/** Seconds of game time in this world (does not advance while the game is paused). */
	UFUNCTION(BlueprintCallable, Category = "SynCam")
	double GetWorldTime() const;

	/**
	 * Teleport an actor (found by object name) to a location in cm and a rotator in degrees, with a
	 * uniform scale. Returns false when no such actor exists.
	 */
	UFUNCTION(BlueprintCallable, Category = "SynCam")
	bool SetActorTransformCm(const FString& ActorName, double X, double Y, double Z, double Pitch, double Yaw, double Roll, double Scale);

	/**
	 * Show the actor's skeletal mesh at exactly `Time` seconds into `AnimationPath` (an animation
	 * sequence or montage asset path; "None" keeps the current one) and keep it frozen there: the mesh
	 * switches to single-node animation mode, stops playing and is evaluated immediately, because a
	 * paused world does not tick it before the capture.
	 *
	 * Returns the time the mesh now shows, unwrapped for looping clips (so it equals `Time`), or
	 * clamped to the clip for one-shot clips; -1 on error (no actor, no skeletal mesh, asset not found).
	 * OutClipLength receives the clip's play length in seconds.
	 */
	UFUNCTION(BlueprintCallable, Category = "SynCam")
	double SetAnimationPose(const FString& ActorName, const FString& AnimationPath, double Time, bool bLoop, double& OutClipLength);

private:
	AActor* FindActorByName(const FString& ActorName) const;
};
