"""Test set-up: 8 fake CPU devices, so sharding is exercised without accelerators."""
import os

_FLAG = '--xla_force_host_platform_device_count=8'
if _FLAG not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + _FLAG).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# TensorFlow (used only by TFDS sources) must never grab an accelerator or print noise.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
