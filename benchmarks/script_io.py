"""What the profiling scripts share: the shape argument "h_qk/h_v:len[+len...]" (e.g. 16/48:4096+28672,
two packed sequences) and the --out JSON. Plain Python, so that a script comparing two versions of
gdnc can use it."""
import json


def parse_shape(text: str) -> tuple[int, int, tuple[int, ...]]:
    """(h_qk, h_v, sequence lengths) of a shape argument."""
    try:
        heads, lengths = text.split(":")
        h_qk, h_v = map(int, heads.split("/"))
        return h_qk, h_v, tuple(map(int, lengths.split("+")))
    except ValueError:
        raise SystemExit(f"expected a shape as h_qk/h_v:len[+len...], e.g. 16/48:4096+28672, got {text!r}") from None


def write_out(path, report) -> None:
    """``report`` as JSON at ``path`` (a script's --out; nothing where it is None)."""
    if path:
        with open(path, "w") as f:
            json.dump(report, f, indent=1, default=str)
