// SynCam frame-sync plugin for Unreal Engine 5.
using UnrealBuildTool;

public class SynCamUnreal : ModuleRules
{
	public SynCamUnreal(ReadOnlyTargetRules Target) : base(Target)
	{
		PCHUsage = PCHUsageMode.UseExplicitOrSharedPCHs;
		PublicDependencyModuleNames.AddRange(new string[] { "Core", "CoreUObject", "Engine", "Json" });
	}
}
