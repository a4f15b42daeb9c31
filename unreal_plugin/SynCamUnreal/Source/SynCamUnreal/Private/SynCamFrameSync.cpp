#include "SynCamFrameSync.h"

#include "Animation/AnimSequenceBase.h"
#include "Animation/AnimSingleNodeInstance.h"
#include "Components/SkeletalMeshComponent.h"
#include "Engine/World.h"
#include "EngineUtils.h"

DEFINE_LOG_CATEGORY_STATIC(LogSynCam, Log, All);

namespace
{
const TCHAR* SynCamPluginVersion = TEXT("1.0.0");
}

ASynCamFrameSync::ASynCamFrameSync()
{
	// Works only when called; nothing to do per tick.
	PrimaryActorTick.bCanEverTick = false;
	SetCanBeDamaged(false);
}

FString ASynCamFrameSync::GetSynCamVersion() const
{
	return SynCamPluginVersion;
}

double ASynCamFrameSync::GetWorldTime() const
{
	const UWorld* World = GetWorld();
	return World ? World->GetTimeSeconds() : -1.0;
}

AActor* ASynCamFrameSync::FindActorByName(const FString& ActorName) const
{
	UWorld* World = GetWorld();
	if (!World)
	{
		return nullptr;
	}
	for (TActorIterator<AActor> It(World); It; ++It)
	{
		if (It->GetName() == ActorName)
		{
			return *It;
		}
	}
	UE_LOG(LogSynCam, Warning, TEXT("SynCam: no actor named '%s' in %s"), *ActorName, *World->GetMapName());
	return nullptr;
}

bool ASynCamFrameSync::SetActorTransformCm(const FString& ActorName, double X, double Y, double Z, double Pitch, double Yaw, double Roll, double Scale)
{
	AActor* Actor = FindActorByName(ActorName);
	if (!Actor)
	{
		return false;
	}
	const FTransform Transform(FRotator(Pitch, Yaw, Roll), FVector(X, Y, Z), FVector(Scale));
	// Teleport: no sweep, no physics velocity from the jump between frames.
	return Actor->SetActorTransform(Transform, false, nullptr, ETeleportType::TeleportPhysics);
}

double ASynCamFrameSync::SetAnimationPose(const FString& ActorName, const FString& AnimationPath, double Time, bool bLoop, double& OutClipLength)
{
	OutClipLength = 0.0;
	AActor* Actor = FindActorByName(ActorName);
	if (!Actor)
	{
		return -1.0;
	}
	USkeletalMeshComponent* Mesh = Actor->FindComponentByClass<USkeletalMeshComponent>();
	if (!Mesh)
	{
		UE_LOG(LogSynCam, Warning, TEXT("SynCam: actor '%s' has no skeletal mesh component"), *ActorName);
		return -1.0;
	}

	UAnimSingleNodeInstance* Single = Mesh->GetSingleNodeInstance();
	if (!AnimationPath.IsEmpty() && AnimationPath != TEXT("None"))
	{
		UAnimSequenceBase* Anim = LoadObject<UAnimSequenceBase>(nullptr, *AnimationPath);
		if (!Anim)
		{
			UE_LOG(LogSynCam, Warning, TEXT("SynCam: cannot load animation '%s'"), *AnimationPath);
			return -1.0;
		}
		// Switch assets only when needed: SetAnimation resets the instance.
		if (Mesh->GetAnimationMode() != EAnimationMode::AnimationSingleNode || !Single || Single->GetAnimationAsset() != Anim)
		{
			Mesh->SetAnimationMode(EAnimationMode::AnimationSingleNode);
			Mesh->SetAnimation(Anim);
			Single = Mesh->GetSingleNodeInstance();
		}
	}
	if (!Single)
	{
		UE_LOG(LogSynCam, Warning, TEXT("SynCam: actor '%s' plays no single-node animation; pass an animation path"), *ActorName);
		return -1.0;
	}

	const UAnimSequenceBase* Sequence = Cast<UAnimSequenceBase>(Single->GetAnimationAsset());
	const double Length = Sequence ? static_cast<double>(Sequence->GetPlayLength()) : 0.0;
	OutClipLength = Length;
	double ClipTime = FMath::Max(Time, 0.0);
	if (Length > 0.0)
	{
		ClipTime = bLoop ? FMath::Fmod(ClipTime, Length) : FMath::Min(ClipTime, Length);
	}

	// Frozen: not playing and a zero rate, so only SetPosition moves the pose even if the world resumes.
	Single->SetLooping(bLoop);
	Single->SetPlaying(false);
	Single->SetPlayRate(0.f);
	Single->SetPosition(static_cast<float>(ClipTime), false);

	// Evaluate the pose now: while the world is paused the component does not tick before the capture.
	Mesh->TickAnimation(0.f, false);
	Mesh->RefreshBoneTransforms();

	const double Shown = Single->GetCurrentTime();
	if (bLoop && Length > 0.0)
	{
		return Shown + Length * FMath::FloorToDouble(FMath::Max(Time, 0.0) / Length);
	}
	return Shown;
}
