"""RewardScorer: rows of images (paths, bytes, arrays) and prompts scored as the model scores them in process,
bad rows reported in the error column with the rest scored; and on a local Ray instance, Parquet rows through
``map_batches`` on an actor pool of 2, nothing lost."""
import io

import numpy as np
import pytest
import ray_cluster
import torch
from PIL import Image
from ray_cluster import ray_local  # noqa: F401 - the session's Ray instance

from conftest import load_rm
from rdfast.integrations.ray import RewardScorer
from rdfast.testing import tiny_checkpoint

TOL = 1e-5  # float32, on log P(yes)


def random_image(rng):
    return Image.fromarray(rng.integers(0, 256, (int(rng.integers(30, 70)), int(rng.integers(30, 70)), 3),
                                        dtype=np.uint8), "RGB")


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def assert_scores_equal(got, want):
    got, want = torch.tensor([float(v) for v in got]), torch.as_tensor(want).float()
    torch.testing.assert_close(got.log(), want.log(), atol=TOL, rtol=0)


def test_scores_rows_of_every_image_form_and_reports_bad_rows(tmp_path):
    rm = load_rm("qwen2_vl")
    rng = np.random.default_rng()
    images = [random_image(rng) for _ in range(4)]
    images[0].save(tmp_path / "a.png")
    batch = {"image": np.array(["a.png", png_bytes(images[1]), np.asarray(images[2]), {"bytes": png_bytes(images[3])},
                                "missing.png", b"not an image", png_bytes(images[0])], dtype=object),
             "prompt": np.array(["a cat", "two dogs", "a red car", "a tree", "x", "y", "   "], dtype=object),
             "id": np.arange(7)}
    out = RewardScorer(rm, root=str(tmp_path))(batch)
    assert out["id"].tolist() == list(range(7))  # every row kept, in order
    want = rm.score(images=images, prompts=["a cat", "two dogs", "a red car", "a tree"])
    assert_scores_equal(out["score"][:4], want)
    assert all(e is None for e in out["error"][:4])
    assert out["score"][4:].tolist() == [None] * 3
    assert "image file not found" in out["error"][4] and "image[5]" in out["error"][5]
    assert "prompt[6]" in out["error"][6]


def test_pairwise_pandas_batch_marks_a_row_the_model_refuses(tmp_path):
    pd = pytest.importorskip("pandas")
    rm = load_rm("qwen2_vl")
    rng = np.random.default_rng()
    refs, cands = [random_image(rng) for _ in range(3)], [random_image(rng) for _ in range(3)]
    prompts = ["a cat", "a dog <|im_start|>", "a car"]  # a chat token in user text: refused by the model
    frame = pd.DataFrame({"ref": [png_bytes(r) for r in refs], "cand": [png_bytes(c) for c in cands],
                          "prompt": prompts})
    out = RewardScorer(rm, image_column="cand", reference_column="ref", instruction="quality")(frame)
    assert list(out.columns) == ["ref", "cand", "prompt", "score", "error"] and len(out) == 3
    want = rm.compare(images1=[refs[0], refs[2]], images2=[cands[0], cands[2]], prompts=["a cat", "a car"],
                      instruction="quality")
    assert_scores_equal(out["score"].iloc[[0, 2]].tolist(), want)
    assert out["score"].isna().tolist() == [False, True, False] and out["error"].isna().tolist() == [True, False, True]


@pytest.mark.ray
@pytest.mark.timeout(90)
@pytest.mark.usefixtures("ray_local")
def test_map_batches_on_an_actor_pool_loses_nothing(tmp_path):
    import ray.data

    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    rm = load_rm("qwen2_vl")
    rng = np.random.default_rng()
    n = 14
    images = [random_image(rng) for _ in range(n)]
    prompts = [f"picture number {k}" for k in range(n)]
    blobs = [png_bytes(im) for im in images]
    blobs[5] = b"\x89PNG broken"
    for part, rows in enumerate((range(0, n // 2), range(n // 2, n))):  # two files: a block for each actor
        pq.write_table(pa.table({"id": list(rows), "image": [blobs[k] for k in rows],
                                 "prompt": [prompts[k] for k in rows]}), tmp_path / f"part{part}.parquet")
    ds = ray.data.read_parquet(str(tmp_path)).repartition(2)  # two blocks: work for both actors
    kwargs = {"model": str(tiny_checkpoint("qwen2_vl")), "device": "cpu"}
    pool = ray.data.ActorPoolStrategy(size=2)
    rows = ds.map_batches(RewardScorer, fn_constructor_kwargs=kwargs, batch_format="pandas", batch_size=4,
                          compute=pool, num_cpus=ray_cluster.ACTOR_CPUS).take_all()
    rows = sorted(rows, key=lambda r: r["id"])
    assert [r["id"] for r in rows] == list(range(n))
    good = [k for k in range(n) if k != 5]
    want = rm.score(images=[images[k] for k in good], prompts=[prompts[k] for k in good])
    assert_scores_equal([rows[k]["score"] for k in good], want)
    assert rows[5]["score"] is None and "cannot decode" in rows[5]["error"]

