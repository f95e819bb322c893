"""The sampler base class: every shipped backend is one class behind it, built one way from
its conf/sampler yaml, and the library outside east/samplers names no backend."""

from __future__ import annotations

import ast
import dataclasses

import pytest
import yaml

from east.errors import ConfigError
from east.samplers import Generation, Sampler, SamplerConfig, build_sampler, sampler_class
from east.samplers.base import DRIVER_FIELDS, sampler_node
from tests.helpers import ROOT

SHIPPED = sorted(p.stem for p in (ROOT / "conf" / "sampler").glob("*.yaml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_each_shipped_backend_is_one_sampler_class_with_its_schema(name):
    node = yaml.safe_load((ROOT / "conf" / "sampler" / f"{name}.yaml").read_text())
    cls = sampler_class(node["_target_"])
    assert issubclass(cls, Sampler) and cls.__module__ == f"east.samplers.{name}"
    # Its schema is its yaml: the same keys, the same defaults, the driver's fields among them.
    assert cls.Config is not None and issubclass(cls.Config, SamplerConfig)
    fields = {f.name: f.default for f in dataclasses.fields(cls.Config)}
    assert set(fields) == set(node) and set(DRIVER_FIELDS) <= set(fields)
    assert {k: fields[k] for k in node} == node
    assert cls.Config()._target_ == node["_target_"]
    # The constructor takes what the schema holds beyond the driver's fields, with the dtype.
    kwargs = {k for k in sampler_node(cls.Config()) if k != "_target_"}
    import inspect

    params = set(inspect.signature(cls.__init__).parameters) - {"self"}
    assert kwargs | {"dtype"} <= params, kwargs | {"dtype"} - params
    # Its own code, and only project modules, go into the keys of the stages that generate.
    assert f"east.samplers.{name}" in cls.code_modules() and "east.samplers.base" in cls.code_modules()


def test_the_hf_backend_is_built_the_same_way_in_the_driver_and_a_worker():
    from east.samplers.hf import HFSampler, HFSamplerConfig

    from_schema = build_sampler(HFSamplerConfig(batch_size=3), "float32")
    from_spec = build_sampler({"_target_": "east.samplers.hf.HFSampler", "batch_size": 3}, "float32")
    assert isinstance(from_schema, HFSampler) and isinstance(from_spec, HFSampler)
    assert (
        (from_schema.batch_size, from_schema.dtype)
        == (from_spec.batch_size, from_spec.dtype)
        == (3, "float32")
    )
    assert from_schema.cache_key == "hf" and not HFSampler.own_process and HFSampler.returns_token_entropy


def test_a_backend_must_be_a_sampler_and_complete():
    from east.validate.keys import backend_class

    # A run's config: one line naming the key (east.validate), before any stage runs.
    with pytest.raises(ConfigError, match=r"sampler._target_='collections.OrderedDict'.*not a subclass"):
        backend_class("collections.OrderedDict")
    with pytest.raises(ConfigError, match=r"sampler._target_='no_such_module.X'.*no_such_module"):
        backend_class("no_such_module.X")
    with pytest.raises(TypeError, match="not a subclass"):  # the library's own call
        sampler_class("collections.OrderedDict")

    class Half(Sampler):  # no generate, no cache_key
        pass

    with pytest.raises(TypeError, match="abstract"):
        Half()

    class Echo(Sampler):
        cache_key = "echo"

        def generate(self, model_path, prompts, seeds, params, token_entropy=False):
            return Generation([[str(p)] * len(s) for p, s in zip(prompts, seeds, strict=True)])

    echo = Echo()
    # What the base class gives a backend that declares nothing more.
    assert (echo.own_process, echo.returns_token_entropy, echo.batch_invariant_mode) == (False, False, False)
    assert echo.required_device_memory("m") is None and echo.config_problem(None) is None
    echo.fit_prompts(10)
    echo.close()
    assert echo.code_modules() == (__name__, "east.samplers.base")


def test_no_module_outside_east_samplers_names_a_backend():
    """The driver, the config check and the workers read what a backend declares on its class;
    none tests a backend's name or imports a shipped backend's module."""
    found = []
    for path in (ROOT / "east").rglob("*.py"):
        if path.parent.name == "samplers":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in ("vllm", "hf", "VLLMSampler", "HFSampler"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
            if isinstance(node, ast.ImportFrom) and (node.module or "") in (
                "east.samplers.hf",
                "east.samplers.vllm",
            ):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {node.module}")
    assert not found, found
