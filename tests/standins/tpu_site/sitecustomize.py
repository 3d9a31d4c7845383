"""On a stand-in TPU worker (tests/standins/gcloud): the pod's shape for `jax.distributed.initialize()`.

On a real pod JAX's cluster detection reads the worker's index and the pod's hosts from the TPU metadata server;
here a cluster type of the same kind reads them from the variables the stand-in gcloud sets.
"""
import os

if 'STANDIN_TPU_WORKER_ID' in os.environ:
  from jax._src.clusters import cluster  # pylint: disable=g-import-not-at-top

  class StandInTpuCluster(cluster.ClusterEnv):
    """Registered by subclassing (ClusterEnv.__init_subclass__)."""
    opt_in_only_method = False

    @classmethod
    def is_env_present(cls) -> bool:
      return True

    @classmethod
    def get_coordinator_address(cls, timeout_secs, override_coordinator_port) -> str:
      del timeout_secs, override_coordinator_port
      return os.environ['STANDIN_TPU_COORDINATOR']

    @classmethod
    def get_process_count(cls) -> int:
      return int(os.environ['STANDIN_TPU_WORKERS'])

    @classmethod
    def get_process_id(cls) -> int:
      return int(os.environ['STANDIN_TPU_WORKER_ID'])
