"""Render a kernel's TileLang source from its template (gdnc.emit.registry), the recurrence's
rewritten chunk program and a config.

A template implements one shape of rewritten program. Before filling it, the renderer checks that
the recurrence's canonical form and program are that shape (gdnc.emit.shapes) and refuses, naming
what differs, where they are not; it writes the equation, the config, the IR hash and the program
into the header of the generated file. The chunk programs of a recurrence are derived once per
IR hash in a process, however many configs are rendered.
"""
from __future__ import annotations

import jinja2

from gdnc.emit.config import MAX_WINDOW_CHUNKS, Heads, describe
from gdnc.emit.registry import KernelSpec, spec
from gdnc.ir.canonical import CanonicalForm, UnsupportedRecurrence, classify
from gdnc.ir.recurrence import Recurrence
from gdnc.ir.program import CHUNK_SIZE
from gdnc.passes import Compiled, compile_programs
from gdnc.version import __version__

_ENV = jinja2.Environment(loader=jinja2.PackageLoader("gdnc", "templates"), undefined=jinja2.StrictUndefined,
                          keep_trailing_newline=True)
_DERIVED: dict[str, tuple[CanonicalForm, Compiled]] = {}


def derived(rec: Recurrence) -> tuple[CanonicalForm, Compiled]:
    """The canonical form and rewritten chunk programs of ``rec``, derived once per IR hash."""
    if rec.ir_hash not in _DERIVED:
        _DERIVED[rec.ir_hash] = (classify(rec), compile_programs(rec))
    return _DERIVED[rec.ir_hash]


def check_program(rec: Recurrence, kernel: KernelSpec) -> Compiled | None:
    """The compiled programs of ``rec`` if ``kernel``'s template implements them (None for a kernel
    made from no program); else UnsupportedRecurrence naming every difference."""
    if kernel.program is None:
        return None
    form, compiled = derived(rec)
    differences = kernel.form_check(form)
    if differences:
        raise UnsupportedRecurrence(f"{rec.name}: no kernel template yet for its form: {'; '.join(differences)}. "
                                    "Use gdnc.reference for this recurrence.")
    problems = kernel.program_check(getattr(compiled, kernel.program))
    if problems:
        raise UnsupportedRecurrence(f"{rec.name}: the rewritten {kernel.program} program does not match the "
                                    f"{kernel.name} template: {'; '.join(problems)}")
    return compiled


def render(rec: Recurrence, kernel: str, heads: Heads, config=None) -> str:
    """The TileLang source of ``kernel`` for ``rec``, specialised to ``heads`` and ``config`` (None:
    the config class's defaults). Raises UnsupportedRecurrence where the template does not implement
    the recurrence's program, ValueError where the config or heads are out of its range."""
    declared = spec(kernel)
    compiled = check_program(rec, declared)
    if declared.config is not None:
        config = declared.config() if config is None else config
        if not isinstance(config, declared.config):
            raise TypeError(f"{kernel} takes a {declared.config.__name__}, got {type(config).__name__}")
        config.check(heads)
    elif config is not None:
        raise TypeError(f"{kernel} has no config, got {config!r}")
    elif declared.heads_check is not None:
        declared.heads_check(heads)
    program_lines = [] if compiled is None else str(getattr(compiled, declared.program).live()).splitlines()
    return _ENV.get_template(declared.template).render(
        version=__version__, equation=rec.equation(), ir_hash=rec.ir_hash, heads=heads, dtype=heads.dtype,
        kernel=kernel, summary=declared.summary, config=config, config_text=describe(config),
        program_name=declared.program, program_lines=program_lines, chunk_size=CHUNK_SIZE,
        max_window=MAX_WINDOW_CHUNKS)
