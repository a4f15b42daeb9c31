"""Command blocks of docs/*.md: find them, check them statically, and build the script that runs a page's blocks.

A fenced ``bash`` or ``python`` block in a guide is preceded by a marker comment saying what the docs test does
with it (see CONTRIBUTING.md, "Docs"):

    <!-- docs-test: run -->                         run it, as written
    <!-- docs-test: run SCENES=2 RES=64x96 -->      run it with these shell variables of the block set to tiny sizes
    <!-- docs-test: skip gpu: 8 GPUs on one node --> do not run it; the reason (gpu, weights, unreal, network,
                                                     cluster) says what it needs that the test machine lacks

Runnable blocks of a page run in order in one shell, in one working folder, so later blocks use what earlier ones
made, exactly as a user pasting them into one terminal. Every command block, run or not, is checked statically:
shell syntax, no comment after a line-continuation backslash, and every ``syncam-data`` / ``syncam-train`` /
``syncam-generate`` call (also under ``torchrun`` or ``accelerate launch``) names options its command has.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

COMMAND_LANGS = {"bash", "sh", "shell", "python"}
SKIP_REASONS = {
    "gpu": "needs a CUDA GPU",
    "weights": "needs real model weights",
    "unreal": "needs a running Unreal Engine",
    "network": "downloads from the internet",
    "cluster": "needs several machines",
}
_MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<action>\w+)(?P<rest>.*?)-->\s*$")
_FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w-]*)\s*$")
_ASSIGN_LINE = re.compile(r"^\s*(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s*)+(?:#.*)?$")
_ASSIGN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(\S*)")
_PROGRAMS = {"syncam-data", "syncam-train", "syncam-generate"}
_MODULES = {
    "syncam_model.cli_train": "syncam-train",
    "syncam_model.cli_generate": "syncam-generate",
    "syncam_data.cli": "syncam-data",
}


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    action: str | None = None  # "run", "skip" or None (no marker)
    overrides: dict[str, str] = field(default_factory=dict)
    reason: str = ""

    @property
    def where(self) -> str:
        return f"{self.page.name}:{self.line}"

    @property
    def is_command(self) -> bool:
        return self.lang in COMMAND_LANGS

    def runnable_text(self) -> str:
        """The block with the marker's variables set, as the test runs it."""
        if not self.overrides:
            return self.text
        used: set[str] = set()
        out = []
        for ln in self.text.splitlines():
            if _ASSIGN_LINE.match(ln):

                def repl(m: re.Match) -> str:
                    if m.group(1) in self.overrides:
                        used.add(m.group(1))
                        return f"{m.group(1)}={self.overrides[m.group(1)]}"
                    return m.group(0)

                ln = _ASSIGN.sub(repl, ln.split("#", 1)[0]).rstrip()
            out.append(ln)
        missing = sorted(set(self.overrides) - used)
        if missing:
            raise ValueError(
                f"{self.where}: the marker sets {missing}, which the block does not assign on a line of its own"
            )
        return "\n".join(out) + "\n"


def parse_page(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    marker: tuple[str, str] | None = None
    i = 0
    while i < len(lines):
        m = _MARKER.match(lines[i])
        if m:
            marker = (m.group("action"), m.group("rest").strip())
            i += 1
            continue
        f = _FENCE.match(lines[i])
        if f:
            indent, lang = f.group("indent"), f.group("lang").lower()
            body = []
            j = i + 1
            while (
                j < len(lines) and not re.match(rf"^{re.escape(indent)}```\s*$", lines[j]) and lines[j].strip() != "```"
            ):
                body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j].lstrip())
                j += 1
            b = Block(path, i + 1, lang, "\n".join(body) + "\n")
            if marker:
                b.action = marker[0]
                if b.action == "run":
                    b.overrides = dict(_ASSIGN.findall(marker[1]))
                elif b.action == "skip":
                    b.reason = marker[1]
            blocks.append(b)
            marker = None
            i = j + 1
            continue
        if lines[i].strip():
            marker = None  # a marker applies to the block right after it (blank lines allowed)
        i += 1
    return blocks


# --- static checks --------------------------------------------------------------------------------------------


def static_problems(block: Block) -> list[str]:
    """Everything wrong with a command block that can be seen without running it."""
    problems = []
    if block.action not in ("run", "skip"):
        problems.append(
            f"{block.where}: a {block.lang} block needs a marker (<!-- docs-test: run --> or <!-- docs-test: skip REASON: why -->)"
        )
    if block.action == "skip":
        key = block.reason.split(":", 1)[0].strip()
        if key not in SKIP_REASONS:
            problems.append(
                f"{block.where}: skip reason {block.reason!r} must start with one of {sorted(SKIP_REASONS)}"
            )
    if block.lang == "python":
        try:
            compile(block.text, block.where, "exec")
        except SyntaxError as e:
            problems.append(f"{block.where}: python syntax error: {e}")
        return problems
    for n, ln in enumerate(block.text.splitlines(), block.line + 1):
        if re.search(r"\\[ \t]+#", ln):
            problems.append(
                f"{block.where} (line {n}): a comment after a line-continuation backslash ends the command there: {ln.strip()!r}"
            )
        elif re.search(r"\\[ \t]+$", ln):
            problems.append(f"{block.where} (line {n}): spaces after a line-continuation backslash: {ln.strip()!r}")
        if ".venv/bin/" in ln and "source .venv/bin/activate" not in ln:
            problems.append(
                f"{block.where} (line {n}): use the commands from PATH (source .venv/bin/activate), not .venv/bin/: {ln.strip()!r}"
            )
    res = subprocess.run(["bash", "-n"], input=block.text, capture_output=True, text=True)
    if res.returncode:
        problems.append(f"{block.where}: bash syntax: {res.stderr.strip()}")
        return problems
    for cmd in commands_in(block.text):
        problems += [f"{block.where}: `{' '.join(cmd)[:120]}`: {p}" for p in check_invocation(cmd)]
    return problems


def commands_in(text: str) -> list[list[str]]:
    """The simple commands of a shell block as token lists (continuations joined, comments dropped).

    Each logical line (backslash continuations joined) is split on its own, so a comment ends only its line.
    """
    cmds: list[list[str]] = []
    for line in text.replace("\\\n", " ").splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=";&|()<>")
        lex.whitespace_split = True
        lex.commenters = "#"
        cur: list[str] = []
        try:
            tokens = list(lex)
        except ValueError:  # an unbalanced quote spanning lines (bash -n has judged the block already)
            continue
        for tok in tokens:
            if tok and set(tok) <= set(";&|()<>"):
                if cur:
                    cmds.append(cur)
                cur = []
            else:
                cur.append(tok)
        if cur:
            cmds.append(cur)
    return cmds


def _target(tokens: list[str]) -> tuple[str, list[str]] | None:
    """(program, its arguments) when the command runs one of SynCam's CLIs, directly or through a launcher."""
    toks = list(tokens)
    while toks and (re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", toks[0]) or toks[0] in ("time", "exec", "nohup")):
        toks.pop(0)
    if not toks:
        return None
    prog = Path(toks[0]).name
    if prog in _PROGRAMS:
        return prog, toks[1:]
    if "-m" in toks:
        i = toks.index("-m")
        if i + 1 < len(toks) and toks[i + 1] in _MODULES:
            return _MODULES[toks[i + 1]], toks[i + 2 :]
    return None


def _apps():
    import typer

    from syncam_data.cli import app as data_app
    from syncam_model.cli_generate import app as gen_app
    from syncam_model.cli_train import app as train_app

    return {
        "syncam-data": typer.main.get_command(data_app),
        "syncam-train": typer.main.get_command(train_app),
        "syncam-generate": typer.main.get_command(gen_app),
    }


def check_invocation(tokens: list[str]) -> list[str]:
    target = _target(tokens)
    if target is None:
        return []
    prog, args = target
    return _walk(_apps()[prog], args, prog, None)


def option_values(tokens: list[str]) -> dict[str, list[str]] | None:
    """{"_command": [program and subcommand], param name: [values given], "_args": [positionals]} of a SynCam call."""
    target = _target(tokens)
    if target is None:
        return None
    prog, args = target
    out: dict[str, list[str]] = {"_command": [prog]}
    problems = _walk(_apps()[prog], args, prog, out)
    return None if problems else out


def _walk(cmd, args: list[str], name: str, collect: dict[str, list[str]] | None) -> list[str]:
    """Options exist, flags take no value, literal values convert, no extra positional arguments; then the subcommand."""
    opts = {}
    for p in cmd.params:
        for o in getattr(p, "opts", []):
            if o.startswith("-"):
                opts[o] = (p, True)
        for o in getattr(p, "secondary_opts", []):
            opts[o] = (p, False)
    arguments = [p for p in cmd.params if p.param_type_name == "argument"]
    free = sum(1 for p in arguments if p.nargs != -1)
    unlimited = any(p.nargs == -1 for p in arguments)
    positional: list[str] = []
    ctx = cmd.make_context(name.split()[-1], [], resilient_parsing=True)
    i = 0
    while i < len(args):
        tok = args[i]
        if tok in ("--help", "-h"):
            return []
        if tok.startswith("-") and len(tok) > 1 and not re.match(r"^-\d", tok):
            key, eq, val = tok.partition("=")
            if key not in opts:
                return [f"`{name}` has no option {key}"]
            p, primary = opts[key]
            if getattr(p, "is_flag", False) or getattr(p, "count", False):
                if eq:
                    return [f"{key} of `{name}` is a flag and takes no value"]
                val = "true" if primary else "false"
            else:
                if not eq:
                    if i + 1 >= len(args):
                        return [f"{key} of `{name}` needs a value"]
                    val = args[i + 1]
                    i += 1
                if "$" not in val and "`" not in val:
                    try:
                        p.process_value(ctx, [val] if p.multiple else val)
                    except Exception as e:  # click's BadParameter, or a conversion error
                        return [f"{key} {val!r}: {getattr(e, 'message', e)}"]
            if collect is not None:
                collect.setdefault(p.name, []).append(val)
            i += 1
            continue
        sub = getattr(cmd, "commands", None)
        if sub is not None and not positional and tok in sub:
            if collect is not None:
                collect["_command"].append(tok)
            return _walk(sub[tok], args[i + 1 :], f"{name} {tok}", collect)
        positional.append(tok)
        i += 1
    if getattr(cmd, "commands", None) is not None and positional and not getattr(cmd, "invoke_without_command", False):
        return [f"`{name}` has no command {positional[0]!r}"]
    if not unlimited and len(positional) > free:
        return [f"unexpected extra argument(s) {positional[free:]} to `{name}`"]
    if collect is not None and positional:
        collect["_args"] = positional
    return []
