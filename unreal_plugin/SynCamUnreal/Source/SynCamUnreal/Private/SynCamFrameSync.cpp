#include "SynCamFrameSync.h"

#include "Animation/AnimSequenceBase.h"
#include "Animation/AnimSingleNodeInstance.h"
#include "Components/SceneComponent.h"
#include "Components/SkeletalMeshComponent.h"
#include "Dom/JsonObject.h"
#include "Engine/World.h"
#include "EngineUtils.h"
#include "Policies/CondensedJsonPrintPolicy.h"
#include "Serialization/JsonSerializer.h"
#include "Serialization/JsonWriter.h"

DEFINE_LOG_CATEGORY_STATIC(LogSynCam, Log, All);

namespace
{
// One compact JSON object per reply (no spaces or newlines to split on).
FString ToJson(const TSharedRef<FJsonObject>& Object)
{
	FString Out;
	const TSharedRef<TJsonWriter<TCHAR, TCondensedJsonPrintPolicy<TCHAR>>> Writer =
		TJsonWriterFactory<TCHAR, TCondensedJsonPrintPolicy<TCHAR>>::Create(&Out);
	FJsonSerializer::Serialize(Object, Writer);
	return Out;
}

FString Error(const FString& Message)
{
	UE_LOG(LogSynCam, Warning, TEXT("SynCam: %s"), *Message);
	const TSharedRef<FJsonObject> Object = MakeShared<FJsonObject>();
	Object->SetBoolField(TEXT("ok"), false);
	Object->SetStringField(TEXT("error"), Message);
	return ToJson(Object);
}

TArray<TSharedPtr<FJsonValue>> Numbers(double A, double B, double C)
{
	return {MakeShared<FJsonValueNumber>(A), MakeShared<FJsonValueNumber>(B), MakeShared<FJsonValueNumber>(C)};
}
} // namespace

ASynCamFrameSync::ASynCamFrameSync()
{
	// Works only when called; nothing to do per tick.
	PrimaryActorTick.bCanEverTick = false;
	SetCanBeDamaged(false);
}

FString ASynCamFrameSync::GetSynCamVersion() const
{
	return SYNCAM_PLUGIN_VERSION;
}

FString ASynCamFrameSync::GetWorldClock() const
{
	const UWorld* World = GetWorld();
	if (!World)
	{
		return Error(TEXT("no world"));
	}
	const TSharedRef<FJsonObject> Object = MakeShared<FJsonObject>();
	Object->SetBoolField(TEXT("ok"), true);
	Object->SetNumberField(TEXT("time"), World->GetTimeSeconds());
	// GFrameCounter advances once per engine tick, paused or not: equal values mean one tick.
	Object->SetNumberField(TEXT("frame"), static_cast<double>(GFrameCounter));
	Object->SetBoolField(TEXT("paused"), World->IsPaused());
	return ToJson(Object);
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
	return nullptr;
}

FString ASynCamFrameSync::SetActorTransformCm(FString ActorName, double X, double Y, double Z, double Pitch, double Yaw, double Roll, double Scale)
{
	AActor* Actor = FindActorByName(ActorName);
	if (!Actor)
	{
		return Error(FString::Printf(TEXT("no actor named '%s'"), *ActorName));
	}
	if (USceneComponent* Root = Actor->GetRootComponent())
	{
		// A spawned Blueprint may have a static root: it could not be moved at run time.
		Root->SetMobility(EComponentMobility::Movable);
	}
	const FTransform Transform(FRotator(Pitch, Yaw, Roll), FVector(X, Y, Z), FVector(Scale));
	// Teleport: no sweep, no physics velocity from the jump between frames.
	Actor->SetActorTransform(Transform, false, nullptr, ETeleportType::TeleportPhysics);

	const FVector Location = Actor->GetActorLocation();
	const FRotator Rotation = Actor->GetActorRotation();
	const FVector Scale3D = Actor->GetActorScale3D();
	const TSharedRef<FJsonObject> Object = MakeShared<FJsonObject>();
	Object->SetBoolField(TEXT("ok"), true);
	Object->SetStringField(TEXT("actor"), Actor->GetName());
	Object->SetArrayField(TEXT("location"), Numbers(Location.X, Location.Y, Location.Z));
	Object->SetArrayField(TEXT("rotation"), Numbers(Rotation.Pitch, Rotation.Yaw, Rotation.Roll));
	Object->SetArrayField(TEXT("scale"), Numbers(Scale3D.X, Scale3D.Y, Scale3D.Z));
	return ToJson(Object);
}

FString ASynCamFrameSync::SetAnimationPose(FString ActorName, FString AnimationPath, double Time, int32 Loop)
{
	AActor* Actor = FindActorByName(ActorName);
	if (!Actor)
	{
		return Error(FString::Printf(TEXT("no actor named '%s'"), *ActorName));
	}
	USkeletalMeshComponent* Mesh = Actor->FindComponentByClass<USkeletalMeshComponent>();
	if (!Mesh)
	{
		return Error(FString::Printf(TEXT("actor '%s' has no skeletal mesh component"), *ActorName));
	}
	const bool bLoop = Loop != 0;

	UAnimSingleNodeInstance* Single = Mesh->GetSingleNodeInstance();
	if (!AnimationPath.IsEmpty() && AnimationPath != TEXT("None"))
	{
		UAnimSequenceBase* Anim = LoadObject<UAnimSequenceBase>(nullptr, *AnimationPath);
		if (!Anim)
		{
			return Error(FString::Printf(TEXT("cannot load animation '%s'"), *AnimationPath));
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
		return Error(FString::Printf(TEXT("actor '%s' plays no single-node animation; pass an animation path"), *ActorName));
	}

	const UAnimSequenceBase* Sequence = Cast<UAnimSequenceBase>(Single->GetAnimationAsset());
	const double Length = Sequence ? static_cast<double>(Sequence->GetPlayLength()) : 0.0;
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

	double Shown = Single->GetCurrentTime();
	if (bLoop && Length > 0.0)
	{
		Shown += Length * FMath::FloorToDouble(FMath::Max(Time, 0.0) / Length);
	}
	const TSharedRef<FJsonObject> Object = MakeShared<FJsonObject>();
	Object->SetBoolField(TEXT("ok"), true);
	Object->SetNumberField(TEXT("time"), Shown);
	Object->SetNumberField(TEXT("clip_length"), Length);
	Object->SetStringField(TEXT("animation"), Sequence ? Sequence->GetPathName() : FString());
	return ToJson(Object);
}

FString ASynCamFrameSync::SpawnActorFromPath(FString AssetPath, FString ActorName)
{
	UWorld* World = GetWorld();
	if (!World)
	{
		return Error(TEXT("no world"));
	}
	// A class path loads directly; a Blueprint asset path names its generated class with a "_C" suffix.
	UClass* Class = StaticLoadClass(AActor::StaticClass(), nullptr, *AssetPath);
	if (!Class && !AssetPath.EndsWith(TEXT("_C")))
	{
		Class = StaticLoadClass(AActor::StaticClass(), nullptr, *(AssetPath + TEXT("_C")));
	}
	if (!Class)
	{
		return Error(FString::Printf(TEXT("cannot load an actor class from '%s'"), *AssetPath));
	}
	FActorSpawnParameters Params;
	if (!ActorName.IsEmpty())
	{
		// UnrealCV finds actors by object name; if the name is taken UE makes a unique one (reported below).
		Params.Name = FName(*ActorName);
		Params.NameMode = FActorSpawnParameters::ESpawnActorNameMode::Requested;
	}
	Params.SpawnCollisionHandlingOverride = ESpawnActorCollisionHandlingMethod::AlwaysSpawn;
	AActor* Actor = World->SpawnActor<AActor>(Class, FTransform::Identity, Params);
	if (!Actor)
	{
		return Error(FString::Printf(TEXT("cannot spawn '%s'"), *AssetPath));
	}
	const TSharedRef<FJsonObject> Object = MakeShared<FJsonObject>();
	Object->SetBoolField(TEXT("ok"), true);
	Object->SetStringField(TEXT("actor"), Actor->GetName());
	Object->SetStringField(TEXT("class"), Class->GetName());
	return ToJson(Object);
}
