"""The settings reference, generated from the settings models (docs/settings.md):

    python -m services.evacctl.settings_doc > docs/settings.md
"""

from __future__ import annotations

from pydantic_core import PydanticUndefined

from services.common import settings as s

ORDER = ("CommonSettings", "DetectorSettings", "PlannerSettings", "TemplaterSettings", "ExecutorSettings",
         "ApiSettings")


def _default(info: object) -> str:
    default = getattr(info, "default", PydanticUndefined)
    if getattr(info, "default_factory", None) is not None:
        return "(computed: this machine's host name)" if "host" in str(info) else "(computed)"
    if default is PydanticUndefined:
        return "(required)"
    if hasattr(default, "get_secret_value"):
        return "(secret)" if default.get_secret_value() else "(empty)"
    return f"`{default}`" if default != "" else "(empty)"


def _range(info: object) -> str:
    parts = []
    for m in getattr(info, "metadata", []):
        for attr, sym in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if hasattr(m, attr):
                parts.append(f"{sym} {getattr(m, attr)}")
    ann = getattr(info, "annotation", None)
    if ann is not None and "Literal" in str(ann):
        parts.append("one of " + ", ".join(f"`{a}`" for a in getattr(ann, "__args__", ())))
    return "; ".join(parts)


def render() -> str:
    out = ["# Settings reference", "",
           "Generated from `services/common/settings.py` by `python -m services.evacctl.settings_doc`;",
           "tests/test_settings.py fails when this page is out of date. Every service reads `EVACUATE_*`",
           "environment variables; an invalid value stops it at start with exit code 2 and a message",
           "naming the variable.", ""]
    common = set(s.CommonSettings.model_fields)
    for name in ORDER:
        cls = getattr(s, name, None)
        if cls is None:
            continue
        fields = cls.model_fields if name == "CommonSettings" else {
            k: v for k, v in cls.model_fields.items() if k not in common}
        title = "All services" if name == "CommonSettings" else name.removesuffix("Settings").lower()
        out += [f"## {title}", "", "| variable | default | valid | meaning |", "| --- | --- | --- | --- |"]
        for field, info in fields.items():
            desc = (info.description or "").replace("|", "\\|")
            out.append(f"| `EVACUATE_{field.upper()}` | {_default(info)} | {_range(info)} | {desc} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(render(), end="")
