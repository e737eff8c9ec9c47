"""Library validation, import discovery and by-value serialization, without a manager."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

import serverless
from serverless.library import LibraryPayload, discover_imports
from serverless.serialization import dumps_by_value, loads_by_value

pytestmark = pytest.mark.timeout(60)


def uses_json_at_top(x):
    return json.dumps(x)


def imports_in_body(x):
    import colorsys  # noqa: F401  (only discovered, never needed here)
    from email import message  # noqa: F401

    return x


def calls_a_helper(x):
    return _helper(x)


def _helper(x):
    import fractions

    return fractions.Fraction(x)


def test_imports_inside_bodies_are_discovered_with_those_of_called_helpers():
    assert discover_imports([imports_in_body]) == ["colorsys", "email"]
    assert discover_imports([calls_a_helper]) == ["fractions"]
    assert discover_imports([uses_json_at_top]) == []  # a module-level import: already there


def test_imports_in_closures_and_nested_functions_are_discovered():
    def outer():
        def inner():
            import wave

            return wave

        return inner

    assert discover_imports([outer]) == ["wave"]


def test_relative_imports_are_not_reported():
    source = "def f():\n    from . import sibling\n    return sibling\n"
    namespace: dict = {}
    exec(compile(source, "<test>", "exec"), namespace)
    assert discover_imports([namespace["f"]]) == []


def test_the_payload_names_listed_and_discovered_imports_apart():
    lib = serverless.Library("l", [imports_in_body], imports=["colorsys", "decimal"])
    payload = lib.payload()
    assert payload.imports == ("colorsys", "decimal")
    assert payload.discovered_imports == ("email",)
    lib = serverless.Library("l", [imports_in_body], discover=False)
    assert lib.payload().discovered_imports == ()


@pytest.mark.parametrize("options, error", [
    ({"name": ""}, ValueError),
    ({"functions": []}, ValueError),
    ({"functions": [42]}, TypeError),
    ({"mode": "thread"}, ValueError),
    ({"slots": 0}, ValueError),
    ({"cores": 0}, ValueError),
    ({"memory_mb": -1}, ValueError),
    ({"timeout": 0}, ValueError),
    ({"imports": [""]}, TypeError),
    ({"setup": "not callable"}, TypeError),
    ({"max_instances": 0}, ValueError),
])
def test_bad_library_options_are_refused_at_once(options, error):
    arguments = {"name": "l", "functions": [uses_json_at_top], **options}
    with pytest.raises(error):
        serverless.Library(**arguments)


def test_two_functions_of_one_name_need_a_dict():
    def f():
        return 1

    other = f

    def g():
        return 2

    g.__name__ = "f"
    with pytest.raises(ValueError, match="two functions"):
        serverless.Library("l", [other, g])
    lib = serverless.Library("l", {"f": f, "g": g})
    assert sorted(lib.functions) == ["f", "g"]


def test_cores_default_to_slots():
    assert serverless.Library("l", [uses_json_at_top], slots=3).cores == 3


def test_a_library_loads_in_a_fresh_interpreter_that_lacks_the_test_file(tmp_path):
    """Functions from this file travel by value: the other interpreter never imports it."""
    factor = 7

    def scaled(x):
        return _helper(x) * factor

    blob = dumps_by_value(serverless.Library("l", [scaled]).payload(), [scaled])
    (tmp_path / "lib.bin").write_bytes(blob)
    script = textwrap.dedent("""
        import sys
        from serverless.serialization import loads_by_value
        payload = loads_by_value(open(sys.argv[1], "rb").read())
        assert "test_library" not in sys.modules
        print(payload.functions["scaled"](3))
    """)
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "lib.bin")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "21"


def test_remote_code_keeps_its_file_name_and_source_lines(tmp_path):
    def fails():
        raise RuntimeError("the failing line")

    blob = dumps_by_value(fails, [fails])
    (tmp_path / "f.bin").write_bytes(blob)
    script = textwrap.dedent("""
        import os, sys, traceback
        from serverless.serialization import loads_by_value
        function = loads_by_value(open(sys.argv[1], "rb").read())
        try:
            function()
        except RuntimeError:
            print(traceback.format_exc())
    """)
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "f.bin")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert __file__ in done.stdout and 'raise RuntimeError("the failing line")' in done.stdout


def test_loads_by_value_returns_what_was_dumped():
    payload = serverless.Library("l", [uses_json_at_top]).payload()
    back = loads_by_value(dumps_by_value(payload, [uses_json_at_top]))
    assert isinstance(back, LibraryPayload) and back.functions["uses_json_at_top"]([1]) == "[1]"


def test_what_cloudpickle_cannot_pickle_travels_with_dill():
    import threading

    lock = threading.Lock()

    def holds_a_lock():
        return lock

    blob = dumps_by_value(holds_a_lock, [holds_a_lock])
    assert blob[:1] == b"d" and hasattr(loads_by_value(blob)(), "acquire")


def test_what_neither_can_pickle_says_why_for_both():
    generator = (i for i in range(3))

    def holds_a_generator():
        return generator

    with pytest.raises(serverless.SerializationError, match="cloudpickle.*dill"):
        dumps_by_value(holds_a_generator, [holds_a_generator])


def test_the_public_api_is_explicit_and_complete():
    for name in serverless.__all__:
        assert getattr(serverless, name) is not None, name
    errors = [getattr(serverless, n) for n in serverless.__all__
              if isinstance(getattr(serverless, n), type)
              and issubclass(getattr(serverless, n), BaseException)
              and n != "RemoteTraceback"]  # not raised: the text shown as a __cause__
    assert errors and all(issubclass(e, serverless.ServerlessError) for e in errors)


def test_importing_serverless_does_not_load_the_manager_or_zmq():
    script = "import sys, serverless; print('zmq' in sys.modules, 'serverless.manager' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["False", "False"], done.stderr
