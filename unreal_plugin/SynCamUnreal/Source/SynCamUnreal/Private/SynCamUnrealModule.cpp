// SynCam frame-sync plugin: module registration (no start-up work; the world subsystem does it per world).
#include "Modules/ModuleManager.h"

IMPLEMENT_MODULE(FDefaultModuleImpl, SynCamUnreal)
