import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# torch_geometric imports torch._dynamo, whose logging handlers bind the sys.stderr of the moment.
# gmn loads it on first use (not with `import gmn`), which in a test would be capsys's stream,
# closed by the next test ("--- Logging error ---"); load it while stderr is the real one.
import torch_geometric  # noqa: E402, F401


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: a 16-channel CNN on 8x8 images runs 3x slower with more threads on a
    shared machine (the adapter modules use it)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory):
    """Six Small-CNN-Zoo runs on digits, two epochs each (built once per test session)."""
    from gmn.zoo import build_zoo

    root = tmp_path_factory.mktemp("zoo") / "tiny"
    build_zoo(root, runs=6, epochs=2, workers=1, progress=False).close()
    return root


@pytest.fixture(scope="session")
def resnet_zoo(tmp_path_factory):
    """Eight residual CNNs with BatchNorm of one shape on digits, two epochs each (about 10 s)."""
    from gmn.zoo import build_zoo

    root = tmp_path_factory.mktemp("zoo") / "resnet"
    build_zoo(root, "generation-resnet", runs=8, epochs=2, checkpoint_epochs=(2,), workers=1, progress=False).close()
    return root
