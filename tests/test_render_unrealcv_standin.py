"""The UnrealCV stand-in is as strict as the real servers: a regression guard.

SynCam's earlier UnrealCV backend passed every test against a stand-in that
shared its assumptions, and would have failed on every scene with a real UE5 +
UnrealCV. These tests talk to the stand-in with the plain ``unrealcv`` client,
the way that backend did, and check that each of its assumptions FAILS against
the open-source server (``oss-5.2``, the default flavour), as it does against
the C++ of unrealcv branch 5.2. If the stand-in ever drifts back to the lax
behaviour, these fail.
"""

from __future__ import annotations

import contextlib
import io
import socket
import struct
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from unrealcv_standin import LevelConfig, StandinServer  # noqa: E402

# The plugin's declarations before it followed vbp's rules (SynCam 1.0.0's SynCamFrameSync.h).
OLD_PLUGIN_HEADER = """
#define SYNCAM_PLUGIN_VERSION TEXT("1.0.0")
UFUNCTION(BlueprintCallable, Category = "SynCam")
FString GetSynCamVersion() const;
UFUNCTION(BlueprintCallable, Category = "SynCam")
double GetWorldTime() const;
UFUNCTION(BlueprintCallable, Category = "SynCam")
bool SetActorTransformCm(const FString& ActorName, double X, double Y, double Z, double Pitch, double Yaw, double Roll, double Scale);
UFUNCTION(BlueprintCallable, Category = "SynCam")
double SetAnimationPose(const FString& ActorName, const FString& AnimationPath, double Time, bool bLoop, double& OutClipLength);
"""
SUBJECT = "/Game/Characters/Walker/BP_Walker.BP_Walker_C"


@contextlib.contextmanager
def client(srv: StandinServer):
    import unrealcv

    c = unrealcv.Client(("127.0.0.1", srv.port))
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert c.connect()
    try:
        yield c
    finally:
        with contextlib.redirect_stdout(io.StringIO()):
            c.disconnect()


def ask(c, *cmds: str) -> list:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return c.request(list(cmds))


def test_previous_assumptions_fail_against_the_open_source_server():
    with (
        StandinServer(
            levels={"/Game/Maps/Guard": LevelConfig(references=(SUBJECT,))}, plugin_header=OLD_PLUGIN_HEADER
        ) as srv,
        client(srv) as c,
    ):
        ask(c, "vset /action/game/level /Game/Maps/Guard")
        time.sleep(0.1)
        # 1. Capabilities from `vget /unrealcv/commands`: the 5.2 branch has no such command.
        version, listing = ask(c, "vget /unrealcv/version", "vget /unrealcv/commands")
        assert version == "1.0.1"
        assert listing.startswith("error") and "handler for URI" in listing
        # 2. A camera's id from the actor name `vset /cameras/spawn` replies: `vget /cameras` lists sensors.
        actor, cameras = ask(c, "vset /cameras/spawn", "vget /cameras")
        assert actor.startswith("FusionCameraActor")
        assert actor not in cameras.split()
        assert cameras.split() == ["PawnSensor", "FusionCameraSensor"]
        # 3. Spawning from an asset path: there is no spawn_from_path; only loaded classes by name.
        reply = ask(c, f"vset /objects/spawn_from_path {SUBJECT} SynCamSubject_1")[0]
        assert reply.startswith("error") and "handler for URI" in reply
        assert ask(c, "vset /objects/spawn BP_Walker_C SynCamSubject_1")[0] == "SynCamSubject_1"
        assert (
            ask(c, "vset /objects/spawn BP_Dog_C SynCamSubject_2")[0]
            == "error Can not find a class with name 'BP_Dog_C'"
        )
        # 4. The old plugin: GetSynCamVersion works, so the plugin looked present...
        assert '"ReturnValue": "1.0.0"' in ask(c, "vbp SynCamFrameSync GetSynCamVersion")[0]
        # ...but vbp skips `const FString&` parameters: the transform is never applied, the bool comes back empty.
        before = ask(c, "vget /object/SynCamSubject_1/location")[0]
        reply = ask(c, "vbp SynCamFrameSync SetActorTransformCm SynCamSubject_1 100 200 0 0 90 0 1")[0]
        assert '"ReturnValue": ""' in reply
        assert ask(c, "vget /object/SynCamSubject_1/location")[0] == before == "0.000 0.000 0.000"
        reply = ask(c, "vbp SynCamFrameSync SetAnimationPose SynCamSubject_1 /Game/Characters/Anim/Walk.Walk 0.5 true")[
            0
        ]
        assert '"ReturnValue": "0.000000"' in reply and srv.world.actors["SynCamSubject_1"].anim_time is None
        # 5. Cine lens: no cine commands on the 5.2 branch.
        assert "handler for URI" in ask(c, "vset /camera/1/cine/filmback 36 24")[0]
        # 6. vbatch is handled in the server loop, never listed; here (before 2026-03) it batches nothing.
        assert ask(c, "vbatch 1", "vget /unrealcv/version") == ["ok", "1.0.1"]
        # 7. A subject spawned after world start is not in the depth image until its mask colour is set.
        ask(
            c,
            "vset /camera/1/size 64 48",
            "vset /camera/1/location -300 0 100",
            "vset /camera/1/rotation -10 0 0",
            "vset /object/SynCamSubject_1/location 0 0 0",
        )
        ask(c, "vset /action/game/pause")
        depth = np.load(io.BytesIO(ask(c, "vget /camera/1/depth npy")[0]))
        lit_before = ask(c, "vget /camera/1/lit bmp")[0]
        ask(c, "vset /object/SynCamSubject_1/color 255 67 226")
        depth_annotated = np.load(io.BytesIO(ask(c, "vget /camera/1/depth npy")[0]))
        assert (depth_annotated < depth).sum() > 20  # the subject appeared in depth only once annotated
        assert ask(c, "vget /camera/1/lit bmp")[0] == lit_before  # the lit image always showed it


def test_a_second_client_waits_ungreeted_until_the_first_leaves():
    with StandinServer() as srv:
        with client(srv):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            s.settimeout(0.6)
            with pytest.raises(socket.timeout):
                s.recv(64)  # no greeting while the first client is served (and no close either)
        # The first client has left: now the waiting one is greeted.
        s.settimeout(5)
        head = s.recv(8)
        assert struct.unpack("<II", head)[0] == 0x9E2B83C1
        assert s.recv(64).startswith(b"connected to")
        s.close()


def test_command_matching_is_the_dispatchers():
    with StandinServer() as srv, client(srv) as c:
        ask(c, "vset /cameras/spawn")
        # [float] is [-+]?\d*[.]?\d+: an exponent does not match, so no handler takes the command.
        assert "handler for URI" in ask(c, "vset /camera/1/location 1e-05 0 0")[0]
        assert ask(c, "vset /camera/1/location 0.00001 0 0")[0] == "ok"
        # A handler that exists answers an unknown target with its own error (what harmless probes rely on).
        assert ask(c, "vget /camera/65535/lit bmp")[0] == "error Invalid sensor id"
        assert ask(c, "vget /object/NoSuchActor/location")[0] == "error Cannot find object"


def test_level_travel_happens_on_a_later_tick_and_head_vbatch_holds_replies():
    with StandinServer(revision="head") as srv, client(srv) as c:
        # In one batch (one tick) the old world is still there after `vset /action/game/level`.
        assert ask(c, "vbatch 2", "vset /action/game/level /Game/Maps/Next", "vget /level/name") == [
            "ok",
            "ok",
            "Default",
        ]
        time.sleep(0.1)
        assert ask(c, "vget /level/name")[0] == "Next"
        assert "No handler found for URI" in ask(c, "vget /unrealcv/commands")[0]  # the message at head
        # At head, `vbatch 2` holds the first reply until the second request arrives.
        c.request(["vbatch 2", "vget /unrealcv/version"], -1)
        time.sleep(0.3)
        assert srv.requests and len(srv._batch) == 1  # held, unanswered
        c.request("vget /unrealcv/version", -1)
        time.sleep(0.2)
        assert srv._batch == []


def test_unrealzoo_flavour_lists_commands_without_vbatch_and_needs_cine_enabled():
    with StandinServer(flavour="unrealzoo-1.1") as srv, client(srv) as c:
        listing = ask(c, "vget /unrealcv/commands")[0].splitlines()
        assert "vget /unrealcv/commands" in listing and "vset /objects/spawn_from_path [str] [str]" in listing
        assert not any(t.startswith("vbatch") for t in listing)
        assert ask(c, "vset /cameras/spawn", "vget /cameras")[1].split() == ["CID-0001", "CID-0002"]
        assert "handler for URI" in ask(c, "vset /camera/1/cine/filmback 36 24")[0]  # 4 floats: W H OFFX OFFY
        assert ask(c, "vset /camera/1/cine/filmback 36 24 0 0")[0].startswith("error")  # not enabled yet
        assert (
            ask(
                c,
                "vset /camera/1/cine/enabled 1",
                "vset /camera/1/cine/filmback 36 24 0 0",
                "vset /camera/1/cine/lens 18 2.8",
            )
            == ["ok"] * 3
        )
        assert float(ask(c, "vget /camera/1/fov")[0]) == pytest.approx(90.0, abs=1e-3)  # 2 atan(36 / (2 * 18))
