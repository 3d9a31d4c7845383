"""vit_jax.compile_check: TPU slices by name, the step-time rule, and a real TPU compile of a small ViT step."""
import os
import subprocess
import sys

import pytest

import loop_testlib as lib
from vit_jax.perf import tpu_compile

HAS_LIBTPU = tpu_compile.libtpu_missing() is None
needs_libtpu = pytest.mark.skipif(not HAS_LIBTPU,
                                  reason="libtpu missing: pip install 'jax[tpu]' (requirements-test.txt)")

# configs/vit_b16_i21k.py (sigmoid loss, Adam with a bf16 first moment, bf16 compute) with one small layer; 1000
# classes and width 256, so that the replicated state (~12 MB per device) gives FSDP something to split.
SMALL = {'model.num_layers': 1, 'model.hidden_size': 256, 'model.mlp_dim': 1024, 'model.num_heads': 2,
         'model.representation_size': 256, 'model.patch_size': 8, 'pp.crop': 32, 'pp.num_classes': 1000}


@pytest.mark.parametrize('name,libtpu_name,slices,devices', [
    ('v4-8', 'v4:2x2x1', 1, 4), ('v4-256', 'v4:4x4x8', 1, 128), ('v4-512', 'v4:4x8x8', 1, 256),
    ('v5p-128', 'v5p:4x4x4', 1, 64), ('v5litepod-16', 'v5e:4x4', 1, 16), ('v6e-256', 'v6e:16x16', 1, 256),
    ('v3-32', 'v3:4x4', 1, 32), ('v3-256', 'v3:8x16', 1, 256), ('2xv4-256', 'v4:4x4x8', 2, 256),
    ('v4:2x2x2', 'v4:2x2x2', 1, 8)])
def test_topology_names(name, libtpu_name, slices, devices):
  topology = tpu_compile.parse_topology(name)
  assert (topology.libtpu_name, topology.num_slices, topology.num_devices) == (libtpu_name, slices, devices)


@pytest.mark.parametrize('name,message', [
    ('v9-8', "--topology='v9-8' is not a TPU slice; write e.g. v4-256"),
    ('v4:2x2', "--topology='v4:2x2': v4 slices are 3D, e.g. v4:2x2x2."),
    ('v4-7', "--topology='v4-7': v4-N counts TensorCores (2 per chip)")])
def test_bad_topology_is_one_line(name, message):
  with pytest.raises(tpu_compile.CompileCheckError) as info:
    tpu_compile.parse_topology(name)
  assert str(info.value).startswith(message) and '\n' not in str(info.value)


def _report(**changes) -> tpu_compile.Report:
  fields = dict(topology='v4-8', libtpu_name='v4:2x2x1', device_kind='TPU v4', num_devices=4, mesh={'data': 4},
                global_batch=64, image_size=224, num_classes=1000, argument_bytes=0., output_bytes=0.,
                alias_bytes=0., temp_bytes=0., code_bytes=0., hbm_bytes=32 * 2**30, compiled_flops=2.75e12,
                compiled_bytes_accessed=1.228e9, model_flops=2e12, counted_model_flops=2e12, optimal_seconds=0.02, has_loops=False,
                peak_flops=275e12, hbm_bandwidth=1228e9, compile_seconds=1.)
  return tpu_compile.Report(**{**fields, **changes})


def test_step_time_uses_the_cost_model_only_where_it_is_sound():
  # Roofline: 2.75e12 / 275e12 = 10 ms compute, 1.228e9 / 1228e9 = 1 ms HBM.
  assert tpu_compile.estimate_step(_report()) == (0.02, 'cost model (optimal_seconds)')
  seconds, what = tpu_compile.estimate_step(_report(optimal_seconds=-149.9))
  assert seconds == pytest.approx(0.01) and what.startswith('roofline, compute-bound; optimal_seconds -150 s')
  seconds, what = tpu_compile.estimate_step(_report(optimal_seconds=0.005))  # faster than the peaks allow
  assert seconds == pytest.approx(0.01) and 'below the roofline' in what
  # A loop body is costed once: 1/4 of the model FLOPs counted, so 4x the compiled FLOPs (bytes stay a floor).
  seconds, what = tpu_compile.estimate_step(_report(has_loops=True, counted_model_flops=5e11))
  assert seconds == pytest.approx(0.04) and what == 'roofline, compute-bound; while loop in the step'
  seconds, _ = tpu_compile.estimate_step(_report(model_flops=1.1e13))  # never faster than the model FLOPs allow
  assert seconds == pytest.approx(0.04)
  seconds, what = tpu_compile.estimate_step(_report(compiled_bytes_accessed=2.456e10, optimal_seconds=None))
  assert seconds == pytest.approx(0.02) and what == 'roofline, HBM-bound; no optimal_seconds'


def test_report_figures():
  r = _report(argument_bytes=10 * 2**30, output_bytes=9 * 2**30, alias_bytes=9 * 2**30, temp_bytes=20 * 2**30,
              code_bytes=2**30, step_seconds=0.02)
  assert r.total_bytes == 31 * 2**30 and r.fits and r.margin_bytes == 2**30
  assert r.images_per_second == pytest.approx(3200) and r.mfu == pytest.approx(2e12 / (0.02 * 275e12))
  assert not _report(temp_bytes=33 * 2**30).fits
  assert 'DOES NOT FIT: margin -1.00 GiB' in tpu_compile.format_report(_report(temp_bytes=33 * 2**30))


@pytest.mark.slow
@needs_libtpu
def test_tpu_memory_grows_with_the_batch_and_shrinks_under_fsdp():
  topology = tpu_compile.parse_topology('v4-8')  # 4 chips, one device each (megacore)

  def compile_small(**overrides):
    config = lib.apply(lib.load_config('vit_b16_i21k'), {**SMALL, **overrides})
    return tpu_compile.topology_report(config, topology)

  small, big = compile_small(batch=8), compile_small(batch=64)  # 2 and 16 images per device
  fsdp = compile_small(batch=8, sharding_rules='fsdp', **{'mesh.data': 1, 'mesh.fsdp': 4})
  assert small.device_kind == 'TPU v4' and small.num_devices == 4 and small.hbm_bytes == 32 * 2**30
  # The batch is an argument: 14 more images per device (uint8 pixels, one int32 label), TPU padding on top.
  assert big.argument_bytes - small.argument_bytes >= 14 * (32 * 32 * 3 + 4)
  assert big.total_bytes > small.total_bytes
  # The state (params, Adam's moments) is an argument: FSDP splits its large matrices over the 4 devices.
  assert fsdp.argument_bytes < 0.5 * small.argument_bytes and fsdp.total_bytes < small.total_bytes
  assert big.compiled_flops > 4 * small.compiled_flops  # 8x the images per device
  assert small.fits and small.step_seconds > 0 and 0 < small.mfu < 1


def _command(*args, hide_libtpu=False):
  code = 'import sys; sys.modules["libtpu"] = None; ' if hide_libtpu else ''  # `import libtpu` fails
  code += 'from vit_jax import compile_check; compile_check.run()'
  env = {**os.environ, 'PYTHONPATH': lib.REPO}
  env.pop('TPU_LIBRARY_PATH', None)
  return subprocess.run([sys.executable, '-c', code, *args], capture_output=True, text=True, env=env, cwd=lib.REPO,
                        timeout=300, check=False)


def test_command_without_libtpu_names_the_extra():
  proc = _command('--config=configs/vit_b16_i21k.py', '--topology=v4-8', hide_libtpu=True)
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.strip().startswith("libtpu is not installed, so the TPU compiler is missing: pip install "
                                        "'jax[tpu]==") and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_command_user_errors_are_one_line():
  proc = _command('--config=configs/vit_b16_i21k.py', '--topology=v4-6')
  assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
      "--topology='v4-6': 3 chips is not a Cloud TPU slice size (1, 4, 8, 16, ... chips)."]
  proc = _command('--config=configs/vit_b16_i21k.py', '--topology=v4-8', '--config.batch=6')
  assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
      'config.batch=6 is not divisible by the 4 devices; use a multiple of 4, e.g. 4. (on v4-8: 4 devices)']


@pytest.mark.slow  # a vit_jax.main process: about 30 s on 2 busy cores
def test_main_dry_run_compiles_for_the_attached_devices_and_writes_nothing(tmp_path):
  workdir = tmp_path / 'run'
  proc = lib.run_main(str(workdir), {}, extra=['--dry_run'])
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.strip().splitlines()
  # The digits data set (8 px after TINY's crop, 10 classes) on the 8 fake CPU devices; CPU HBM is unknown.
  assert lines[0].startswith("attached (1 processes) (cpu): 8 devices, mesh {'data': 8, 'fsdp': 1, 'tensor': 1}; "
                             'global batch 16 (2 per device), 8 px, 10 classes;')
  assert lines[1].startswith('memory per device: arguments') and lines[1].endswith('(HBM of this device unknown).')
  assert not workdir.exists()  # nothing allocated, nothing written
