"""Frameworks are optional: no module of kvsessions imports the OpenAI Agents SDK or Google ADK
except the integration module made for it, and that module, without its framework, says which
extra to install."""

from __future__ import annotations

import subprocess
import sys

import pytest

#: Integration module -> the top-level package of its framework.
FRAMEWORKS = {"kvsessions.integrations.openai_agents": "agents",
              "kvsessions.integrations.adk": "google.adk"}

EVERY_OTHER_MODULE = """
import importlib, pkgutil, sys, kvsessions
skip = set(sys.argv[1:])
for module in pkgutil.walk_packages(kvsessions.__path__, "kvsessions."):
    if (module.name not in skip and not module.name.endswith("__main__")
            and not module.name.startswith("kvsessions.integrations.")):
        importlib.import_module(module.name)
importlib.import_module("kvsessions.integrations")
importlib.import_module("kvsessions.integrations.storage_source")
loaded = sorted(name for name in ("agents", "google.adk", "google.genai") if name in sys.modules)
print(",".join(loaded))
"""


def test_no_other_module_imports_a_framework() -> None:
    result = subprocess.run([sys.executable, "-c", EVERY_OTHER_MODULE, *FRAMEWORKS],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


@pytest.mark.parametrize(("module", "framework"), sorted(FRAMEWORKS.items()))
def test_without_its_framework_the_module_names_the_extra(module: str, framework: str) -> None:
    extra = {"agents": "openai-agents", "google.adk": "adk"}[framework]
    script = (f"import sys; sys.modules[{framework!r}] = None\n"
              "from kvsessions.errors import MissingDependencyError\n"
              f"try:\n    import {module}\n"
              "except MissingDependencyError as error:\n    print(error)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"pip install 'kvsessions[{extra}]'" in result.stdout
