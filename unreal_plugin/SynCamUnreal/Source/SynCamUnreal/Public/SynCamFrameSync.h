// SynCam frame-sync actor: Blueprint-callable functions that UnrealCV's `vbp` command reaches by the
// actor's name ("SynCamFrameSync", spawned in every game world by USynCamWorldSubsystem).
//
// UnrealCV has no frame clock. For synchronized multi-camera capture SynCam pauses the world and, for
// every frame, sets each subject's transform and animation time explicitly through these functions,
// captures every camera, and checks that nothing moved. Every function reports what the engine now
// holds, so the Python side can check it against what it asked for.
//
// Rules for a function `vbp` can call (UnrealCV, branch 5.2, FAliasHandler::VExecWithOutput in
// Source/UnrealCV/Private/Commands/AliasHandler.cpp):
//   * its argument parser SKIPS every parameter flagged as an out or reference parameter, and UE flags
//     `const FString&` as a reference parameter: such a parameter never receives its argument, the next
//     parameter gets it instead, the import fails and the function is silently not called;
//   * numeric outputs are read from the start of the parameter block instead of their own offset, and
//     bool outputs come back as empty strings.
// So every function here takes FString and numbers BY VALUE, has no output parameters, and returns one
// FString: a JSON object ({"ok": true, ...} or {"ok": false, "error": "..."}). vbp wraps it as
// {"ReturnValue": "<that JSON>"}. tests/unrealcv_standin.py parses this header and applies the same
// rules, so a declaration that breaks them fails SynCam's tests.
#pragma once

#include "CoreMinimal.h"
#include "GameFramework/Actor.h"
#include "SynCamFrameSync.generated.h"

// Version 2: the vbp-safe signatures. Version 1.0.0 declared `const FString&` parameters and bool/double
// returns, which vbp cannot call; the Python side refuses it.
#define SYNCAM_PLUGIN_VERSION TEXT("2.0.0")

UCLASS(NotPlaceable, Transient)
class SYNCAMUNREAL_API ASynCamFrameSync : public AActor
{
	GENERATED_BODY()

public:
	ASynCamFrameSync();

	/** Plugin version, e.g. "2.0.0"; SynCam calls it to detect the plugin. */
	UFUNCTION(BlueprintCallable, Category = "SynCam")
	FString GetSynCamVersion() const;

	/**
	 * {"ok": true, "time": world seconds (frozen while paused), "frame": GFrameCounter (counts engine ticks,
	 * also while paused), "paused": bool}.
	 */
	UFUNCTION(BlueprintCallable, Category = "SynCam")
	FString GetWorldClock() const;

	/**
	 * Teleport an actor (found by object name) to a location in cm and a rotator in degrees, with a uniform
	 * scale. Returns {"ok": true, "actor", "location": [x, y, z], "rotation": [pitch, yaw, roll],
	 * "scale": [x, y, z]} as the actor now holds them.
	 */
	UFUNCTION(BlueprintCallable, Category = "SynCam")
	FString SetActorTransformCm(FString ActorName, double X, double Y, double Z, double Pitch, double Yaw, double Roll, double Scale);

	/**
	 * Show the actor's skeletal mesh at exactly `Time` seconds into `AnimationPath` (an animation sequence
	 * asset path; "None" keeps the current one) and keep it frozen there: the mesh switches to single-node
	 * animation mode, stops playing and is evaluated immediately, because a paused world does not tick it
	 * before the capture. `Loop` is 1 (wrap around the clip) or 0 (hold the last pose).
	 *
	 * Returns {"ok": true, "time": the time the mesh now shows (unwrapped for looping clips, so it equals
	 * Time; clamped for one-shot clips), "clip_length": seconds, "animation": path}.
	 */
	UFUNCTION(BlueprintCallable, Category = "SynCam")
	FString SetAnimationPose(FString ActorName, FString AnimationPath, double Time, int32 Loop);

	/**
	 * Load an actor class from an asset path (a Blueprint class `/Game/X/BP_A.BP_A_C`, or the Blueprint
	 * asset `/Game/X/BP_A.BP_A`, whose generated class is then used) and spawn it at the world origin with
	 * the requested name. Unlike UnrealCV's `vset /objects/spawn`, the class need not be loaded already.
	 * Returns {"ok": true, "actor": the new actor's name, "class": its class name}.
	 */
	UFUNCTION(BlueprintCallable, Category = "SynCam")
	FString SpawnActorFromPath(FString AssetPath, FString ActorName);

private:
	AActor* FindActorByName(const FString& ActorName) const;
};
