"""Preprocessing ops and the Grain pipeline, on a small synthetic corpus."""

import io
import itertools

import grain
import numpy as np
import pytest
from PIL import Image

from bigvis import data, preprocess, records, synthetic

NUM_RECORDS = 40
PP = "decode|random_resized_crop(16)|flip_lr|value_range(-1, 1)"
LABELS = {"shape": ("class", synthetic.NUM_SHAPES), "tags": ("multi_hot", synthetic.NUM_TAGS)}


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
  out = tmp_path_factory.mktemp("shapes")
  return synthetic.make_shapes_corpus(str(out), num_records=NUM_RECORDS, image_size=24, num_shards=3)


def _dataset(paths, **kwargs):
  args = dict(pp=PP, labels=LABELS, batch_size=8, seed=0)
  return data.make_dataset(paths, **{**args, **kwargs})


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["index"], y["index"])
    np.testing.assert_array_equal(x["image"], y["image"])
    for field in LABELS:
      np.testing.assert_array_equal(x["labels"][field], y["labels"][field])


# --- preprocess -------------------------------------------------------------------------------

def _encoded(mode, size=(20, 30)) -> bytes:
  image = Image.new(mode, size)
  if mode == "P":
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.info["transparency"] = 0
  out = io.BytesIO()
  image.save(out, format="PNG")
  return out.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P"])
def test_decode_gives_rgb_uint8_on_white(mode):
  image = preprocess.parse("decode")({"image": _encoded(mode)}, None)["image"]
  assert image.shape == (30, 20, 3) and image.dtype == np.uint8
  if mode in ("RGBA", "LA", "P"):  # fully transparent pixels become white
    assert (image == 255).all()


@pytest.mark.parametrize("pp, shape, dtype, lo, hi", [
    ("decode|resize(12)", (12, 12, 3), np.uint8, 0, 255),
    ("decode|resize((10, 14))", (10, 14, 3), np.uint8, 0, 255),
    ("decode|resize_small(12)", (12, 18, 3), np.uint8, 0, 255),
    ("decode|center_crop(10)", (10, 10, 3), np.uint8, 0, 255),
    ("decode|random_resized_crop(16)", (16, 16, 3), np.uint8, 0, 255),
    ("decode|random_resized_crop(8, scale=(0.5, 1.0))|flip_lr(1.0)", (8, 8, 3), np.uint8, 0, 255),
    ("decode|value_range(-1, 1)", (24, 36, 3), np.float32, -1, 1),
    ("decode|value_range(0, 1)", (24, 36, 3), np.float32, 0, 1),
    ("decode|normalize", (24, 36, 3), np.float32, -2.2, 2.7),
])
def test_op_shapes_dtypes_ranges(pp, shape, dtype, lo, hi):
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, size=(24, 36, 3), dtype=np.uint8)
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, format="PNG")
  image = preprocess.parse(pp)({"image": out.getvalue(), "keep": 1}, rng)["image"]
  assert image.shape == shape and image.dtype == dtype
  assert lo <= image.min() and image.max() <= hi


def test_flip_and_value_range_exact():
  image = np.arange(12, dtype=np.uint8).reshape(2, 2, 3) * 20
  out = preprocess.parse("flip_lr(p=1.0)|value_range(0, 255)")({"image": image}, np.random.default_rng(0))
  np.testing.assert_allclose(out["image"], image[:, ::-1].astype(np.float32), atol=1e-4)


def test_random_ops_deterministic_for_same_rng():
  image = np.random.default_rng(1).integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
  fn = preprocess.parse("random_resized_crop(16)|flip_lr")
  run = lambda seed: fn({"image": image}, np.random.default_rng(seed))["image"]  # noqa: E731
  np.testing.assert_array_equal(run(7), run(7))
  assert any(not np.array_equal(run(7), run(s)) for s in range(8, 12))


def test_unknown_op_and_bad_syntax():
  with pytest.raises(ValueError, match=r"unknown pp op 'warp'.*known ops: .*center_crop.*decode"):
    preprocess.parse("decode|warp(3)")
  with pytest.raises(ValueError, match="literals"):
    preprocess.parse("resize(__import__('os'))")
  with pytest.raises(ValueError, match="resize"):
    preprocess.parse("resize(1, 2, 3)")


# --- data -------------------------------------------------------------------------------------

def test_batch_shapes_and_dtypes(paths):
  batch = next(iter(_dataset(paths)))
  assert batch["image"].shape == (8, 16, 16, 3) and batch["image"].dtype == np.float32
  assert -1 <= batch["image"].min() and batch["image"].max() <= 1
  assert batch["labels"]["shape"].shape == (8,) and batch["labels"]["shape"].dtype == np.int32
  assert batch["labels"]["tags"].shape == (8, synthetic.NUM_TAGS)
  assert batch["labels"]["tags"].dtype == np.float32
  np.testing.assert_array_equal(batch["labels"]["tags"].sum(1), 4)  # shape, colour, size, style
  assert batch["index"].dtype == np.int64


def test_determinism_and_reshuffle(paths):
  a = _take(iter(_dataset(paths)), 10)
  _assert_batches_equal(a, _take(iter(_dataset(paths)), 10))
  b = _take(iter(_dataset(paths, seed=1)), 5)
  assert not np.array_equal(a[0]["index"], b[0]["index"])
  # 5 batches per epoch: each epoch is a permutation, and the next epoch reshuffles.
  epoch0, epoch1 = (np.concatenate([x["index"] for x in a[k:k + 5]]) for k in (0, 5))
  assert sorted(epoch0) == sorted(epoch1) == list(range(NUM_RECORDS))
  assert not np.array_equal(epoch0, epoch1)


def test_fraction_is_a_fixed_subset(paths):
  """fraction= reads the same random subset for every seed and process count; epochs cover it."""
  def indices(**kwargs):
    ds = _dataset(paths, fraction=0.25, num_epochs=1, drop_remainder=False, **kwargs)
    return sorted(int(i) for b in ds for i in b["index"])
  subset = indices()
  assert len(subset) == round(NUM_RECORDS * 0.25) == len(set(subset))
  assert subset != list(range(len(subset)))  # random, not the first records
  assert indices(seed=7) == subset
  assert sorted(indices(process_index=0, process_count=2)
                + indices(process_index=1, process_count=2)) == subset
  two_epochs = np.concatenate([b["index"] for b in _take(iter(_dataset(
      paths, fraction=0.25, batch_size=len(subset))), 2)])
  assert set(two_epochs.tolist()) == set(subset)
  with pytest.raises(ValueError, match="fraction=0"):
    _dataset(paths, fraction=0.0)


def test_eval_order_and_remainder(paths):
  ds = _dataset(paths, shuffle=False, num_epochs=1, drop_remainder=False, batch_size=16,
                pp="decode|value_range(0, 1)")
  batches = list(ds)
  assert [len(b["index"]) for b in batches] == [16, 16, 8]
  np.testing.assert_array_equal(np.concatenate([b["index"] for b in batches]), np.arange(NUM_RECORDS))


def test_process_sharding_disjoint_and_complete(paths):
  seen = []
  for process_index in range(3):
    ds = _dataset(paths, num_epochs=1, drop_remainder=False, process_index=process_index,
                  process_count=3)
    seen.append({int(i) for b in ds for i in b["index"]})
  assert all(not (x & y) for x, y in itertools.combinations(seen, 2))
  assert set().union(*seen) == set(range(NUM_RECORDS))


def test_exact_resume_in_process(paths):
  ds = _dataset(paths)
  expected = _take(iter(ds), 8)
  it = iter(ds)
  _take(it, 4)
  state = it.get_state()
  fresh = iter(_dataset(paths))
  fresh.set_state(state)
  _assert_batches_equal(_take(fresh, 4), expected[4:])  # crosses into the second epoch


def test_exact_resume_with_workers_through_orbax(paths, tmp_path):
  import orbax.checkpoint as ocp  # A hard dependency: a missing one must fail, not skip.
  expected = _take(iter(_dataset(paths)), 7)  # in process: batches must not depend on workers
  it = iter(_dataset(paths, worker_count=2))
  try:
    _assert_batches_equal(_take(it, 3), expected[:3])
    state = it.get_state()
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
      manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
      manager.wait_until_finished()
    _take(it, 2)  # move on, so the restore has something to undo
  finally:
    it.close()

  fresh = iter(_dataset(paths, worker_count=2))
  try:
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
      manager.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    assert fresh.get_state() == state
    _assert_batches_equal(_take(fresh, 4), expected[3:])
  finally:
    fresh.close()


@pytest.mark.parametrize("labels, message", [
    ({"shape": ("class", 3)}, r"labels\.shape.*\[0, 3\)"),
    ({"tags": ("multi_hot", 5)}, r"labels\.tags.*\[0, 5\)"),
    ({"missing": ("class", 3)}, r"labels\.missing': missing"),
    ({"tags": ("class", 20)}, r"labels\.tags.*class label"),
])
def test_bad_labels_name_field_and_record(paths, labels, message):
  ds = _dataset(paths, labels=labels, shuffle=False)
  with pytest.raises(records.RecordError, match=message) as e:
    next(iter(ds))
  assert ".array_record record " in str(e.value) and "(id 'shapes-train-0-" in str(e.value)


def test_bad_arguments(paths):
  with pytest.raises(ValueError, match="kind"):
    _dataset(paths, labels={"shape": ("softmax", 3)})
  with pytest.raises(ValueError, match="process_index"):
    _dataset(paths, process_index=3, process_count=3)
  with pytest.raises(ValueError, match="float32"):
    next(iter(_dataset(paths, pp="decode|resize(8)")))


def test_corrupt_record_names_shard_and_position(paths, tmp_path):
  from array_record.python import array_record_module
  bad = str(tmp_path / "bad-00000-of-00001.array_record")
  writer = array_record_module.ArrayRecordWriter(bad, records.WRITER_OPTIONS)
  writer.write(records.read_shard(paths[0])[0])
  writer.write(b"\x93 not a record")
  writer.close()
  ds = _dataset([bad], shuffle=False, batch_size=2)
  with pytest.raises(records.RecordError, match=r"bad-00000-of-00001\.array_record record 1: not a msgpack"):
    next(iter(ds))


# --- augmentations ----------------------------------------------------------------------------

AUGMENT_OPS = [
    ("color_jitter(0.4, 0.4, 0.4, 0.1)", (40, 50, 3)),
    ("color_jitter(brightness=0.8, hue=0.5)", (40, 50, 3)),
    ("grayscale(1.0)", (40, 50, 3)),
    ("random_crop(32, padding=4)", (32, 32, 3)),
    ("random_crop((20, 30))", (20, 30, 3)),
    ("gaussian_blur(1.0)", (40, 50, 3)),
    ("rand_augment", (40, 50, 3)),
    ("rand_augment(num_ops=3, magnitude=10)", (40, 50, 3)),
]


@pytest.mark.parametrize("pp, shape", AUGMENT_OPS)
def test_augment_shape_dtype_range_determinism(pp, shape):
  image = np.random.default_rng(1).integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
  fn = preprocess.parse(pp)
  run = lambda seed: fn({"image": image, "keep": 1}, np.random.default_rng(seed))  # noqa: E731
  out = run(7)
  assert out["keep"] == 1
  assert out["image"].shape == shape and out["image"].dtype == np.uint8
  np.testing.assert_array_equal(out["image"], run(7)["image"])
  if not pp.startswith("grayscale(1.0)"):  # the only op here that ignores the rng
    assert any(not np.array_equal(out["image"], run(s)["image"]) for s in range(8, 12))


def test_rand_augment_every_op_keeps_shape():
  image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (20, 30, 3), dtype=np.uint8))
  assert len(preprocess._RAND_AUGMENT_OPS) == 13
  for name, op in preprocess._RAND_AUGMENT_OPS.items():
    for sign in (1, -1):
      out = np.asarray(op(image, 0.9, sign))
      assert out.shape == (20, 30, 3) and out.dtype == np.uint8, name


def test_augment_exact_cases():
  image = np.random.default_rng(3).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
  rng = np.random.default_rng(0)
  gray = preprocess.parse("grayscale(1.0)")({"image": image}, rng)["image"]
  assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
  for op in ("grayscale(0.0)", "gaussian_blur(0.0)", "color_jitter(p=0.0)",
             "color_jitter(0, 0, 0, 0)", "rand_augment(num_ops=0)"):
    np.testing.assert_array_equal(preprocess.parse(op)({"image": image}, rng)["image"], image)
  padded = preprocess.parse("random_crop(8, padding=8, fill=7)")
  crops = [padded({"image": image}, np.random.default_rng(s))["image"] for s in range(20)]
  assert any((c == 7).all() for c in crops)  # a box entirely in the padding
  with pytest.raises(ValueError, match="only 8x8"):
    preprocess.parse("random_crop(9)")({"image": image}, rng)
  with pytest.raises(ValueError, match="magnitude"):
    preprocess.parse("rand_augment(magnitude=11)")


def test_augment_pp_in_pipeline(paths):
  pp = ("decode|random_crop(20, padding=2)|color_jitter|grayscale(0.2)|gaussian_blur(0.5)"
        "|rand_augment|value_range(-1, 1)")
  batch = next(iter(_dataset(paths, pp=pp)))
  assert batch["image"].shape == (8, 20, 20, 3) and batch["image"].dtype == np.float32


# --- mixture ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def other_paths(tmp_path_factory):
  out = tmp_path_factory.mktemp("shapes_b")
  return synthetic.make_shapes_corpus(str(out), num_records=24, image_size=20, num_shards=2,
                                      seed=1, name="other")


def _sources(paths, other_paths, weights=(0.75, 0.25)):
  return [dict(paths=paths, weight=weights[0], pp=PP, labels=LABELS),
          dict(paths=other_paths, weight=weights[1], pp="decode|resize(16)|value_range(-1, 1)",
               labels={"shape": LABELS["shape"]})]


def _mixture(paths, other_paths, **kwargs):
  return data.make_mixture(_sources(paths, other_paths), **{"batch_size": 8, "seed": 0, **kwargs})


def _assert_mixture_batches_equal(a, b):
  _assert_batches_equal(a, b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["source"], y["source"])


@pytest.mark.parametrize("weights", [(0.75, 0.25), (0.3, 0.7)])
def test_mixture_weights(paths, other_paths, weights):
  ds = data.make_mixture(_sources(paths, other_paths, weights), batch_size=50, seed=0)
  batches = [b["source"] for b in _take(iter(ds), 40)]  # 2,000 examples
  assert abs((np.concatenate(batches) == 0).mean() - weights[0]) < 0.02
  # The interleaving is stratified, not sampled: every batch holds the weights to within about
  # one example (a sampled mixture would stray by ~3 examples per batch of 50).
  assert max(abs((b == 0).sum() - weights[0] * 50) for b in batches) <= 1.5


def test_mixture_batches_labels_and_masks(paths, other_paths):
  for batch in _take(iter(_mixture(paths, other_paths)), 10):  # > 1 epoch of the small source
    src = batch["source"]
    assert src.dtype == np.int32 and set(src) <= {0, 1}
    assert batch["image"].shape == (8, 16, 16, 3)
    assert set(batch["labels"]) == set(batch["label_mask"]) == set(LABELS)
    assert batch["label_mask"]["shape"].all()  # both sources have it
    mask = batch["label_mask"]["tags"]
    assert mask.dtype == np.bool_
    np.testing.assert_array_equal(mask, src == 0)
    tags = batch["labels"]["tags"]
    assert tags.shape == (8, synthetic.NUM_TAGS)
    assert (tags[~mask] == 0).all() and (tags[mask].sum(1) == 4).all()
    assert (batch["index"][src == 1] < 24).all()


def test_mixture_determinism_and_resume(paths, other_paths):
  expected = _take(iter(_mixture(paths, other_paths)), 8)
  _assert_mixture_batches_equal(expected, _take(iter(_mixture(paths, other_paths)), 8))
  assert not np.array_equal(
      expected[0]["index"], next(iter(_mixture(paths, other_paths, seed=1)))["index"])
  for workers in (0, 2):
    it = iter(_mixture(paths, other_paths, worker_count=workers))
    try:
      _assert_mixture_batches_equal(_take(it, 3), expected[:3])  # workers change nothing
      state = it.get_state()
      _take(it, 2)
    finally:
      if workers:
        it.close()
    fresh = iter(_mixture(paths, other_paths, worker_count=workers))
    try:
      fresh.set_state(state)
      _assert_mixture_batches_equal(_take(fresh, 5), expected[3:])
    finally:
      if workers:
        fresh.close()


def test_mixture_global_batches_do_not_depend_on_process_count(paths, other_paths):
  whole = _take(iter(_mixture(paths, other_paths, batch_size=8)), 3)
  halves = [_take(iter(_mixture(paths, other_paths, batch_size=4, process_index=p,
                                process_count=2)), 3) for p in range(2)]
  for j in range(3):  # Global batch j = the processes' j-th batches side by side.
    for key in ("index", "source", "image"):
      np.testing.assert_array_equal(
          np.concatenate([halves[0][j][key], halves[1][j][key]]), whole[j][key])


def test_mixture_bad_sources(paths, other_paths):
  good = _sources(paths, other_paths)
  with pytest.raises(ValueError, match=r"sources\[1\]: want keys"):
    data.make_mixture([good[0], {**good[1], "wieght": 1.0}], batch_size=4, seed=0)
  with pytest.raises(ValueError, match="weight must be > 0"):
    data.make_mixture([good[0], {**good[1], "weight": 0}], batch_size=4, seed=0)
  with pytest.raises(ValueError, match=r"different image shapes \[\(16, 16, 3\), \(8, 8, 3\)\]"):
    data.make_mixture([good[0], {**good[1], "pp": "decode|resize(8)|value_range"}],
                      batch_size=4, seed=0)
  with pytest.raises(ValueError, match=r"labels\['shape'\].*earlier source"):
    data.make_mixture([good[0], {**good[1], "labels": {"shape": ("class", 3)}}],
                      batch_size=4, seed=0)


# --- eval -------------------------------------------------------------------------------------

@pytest.mark.parametrize("process_count, batch_size", [(1, 16), (2, 8), (3, 16), (2, 64)])
def test_eval_covers_every_record_once_with_padding(paths, process_count, batch_size):
  seen, num_batches = [], set()
  for process_index in range(process_count):
    batches = list(data.make_eval_dataset(
        paths, pp="decode|value_range(0, 1)", labels=LABELS, batch_size=batch_size,
        process_index=process_index, process_count=process_count, with_ids=True))
    num_batches.add(len(batches))
    for b in batches:
      assert b["image"].shape == (batch_size, 24, 24, 3) and b["mask"].dtype == np.bool_
      real = b["mask"]
      assert (b["index"][~real] == -1).all() and (b["image"][~real] == 0).all()
      assert (b["labels"]["tags"][~real] == 0).all() and (b["id"][~real] == "").all()
      assert all(i.startswith("shapes-train-") for i in b["id"][real])
      seen.extend(b["index"][real].tolist())
  assert len(num_batches) == 1  # every process runs the same number of eval steps
  assert sorted(seen) == list(range(NUM_RECORDS))


def test_eval_with_workers_and_more_processes_than_records(paths):
  ds = data.make_eval_dataset(paths[:1], pp="decode|value_range(0, 1)", labels={},
                              batch_size=8, worker_count=2)
  batches = list(ds)
  single = data.make_eval_dataset(paths[:1], pp="decode|value_range(0, 1)", labels={},
                                  batch_size=8)
  for a, b in zip(batches, single, strict=True):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["mask"], b["mask"])
  n = len(records.read_shard(paths[0]))
  empty = list(data.make_eval_dataset(paths[:1], pp="decode|value_range(0, 1)", labels={},
                                      batch_size=4, process_index=n, process_count=n + 1))
  assert len(empty) == 1 and not empty[0]["mask"].any()
