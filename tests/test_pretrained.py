"""Pretrained weights: big_vision and vision_transformer .npz layouts, posemb resampling, errors,
and bigvis training checkpoints."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigvis import heads, models, pretrained, sharding, train
from tests import helpers


def _config(pool_type='tok'):
  c = helpers.tiny_config('')
  c.model.pool_type = pool_type
  return c


def _init(module, seed, size=32):
  return module.init(jax.random.key(seed), jnp.zeros((1, size, size, 3)))['params']


def _flat(params):
  return {sharding.path_name(p): np.asarray(x)
          for p, x in jax.tree_util.tree_leaves_with_path(params)}


def _assert_equal(actual, expected):
  """Leaf by leaf, bit for bit, over `expected`'s names (a subset of `actual`'s)."""
  actual = _flat(actual)
  for name, x in _flat(expected).items():
    np.testing.assert_array_equal(actual[name], x, err_msg=name)


@pytest.fixture(scope='module')
def classifier():
  """A big_vision ViT classifier (trunk + `head`), its params and their flat big_vision names."""
  trunk = models.build_trunk(_config().model, num_classes=10)
  params = _init(trunk, seed=0)
  return trunk, params, _flat(params)


def test_big_vision_npz_reproduces_the_trunk_and_keeps_heads_at_init(classifier, tmp_path):
  trunk, params, flat = classifier
  assert 'head/kernel' in flat and not any(k.startswith('trunk/') for k in flat)
  np.savez(tmp_path / 'bv.npz', **flat)
  model = heads.build_model(_config())
  fresh = _init(model, seed=1)
  loaded = pretrained.load(fresh, tmp_path / 'bv.npz')

  assert jax.tree.structure(loaded) == jax.tree.structure(fresh)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(fresh)):
    assert a.shape == b.shape and a.dtype == b.dtype
  _assert_equal(loaded['trunk'], {k: v for k, v in params.items() if k != 'head'})
  _assert_equal(loaded, {k: v for k, v in fresh.items() if k.startswith('head_')})
  images = jax.random.uniform(jax.random.key(2), (4, 32, 32, 3), minval=-1, maxval=1)
  _, want = jax.jit(trunk.apply)({'params': params}, images)
  _, got = jax.jit(model.apply)({'params': loaded}, images)
  np.testing.assert_array_equal(got['pre_logits'], want['pre_logits'])


def test_params_prefix_and_old_vision_transformer_layout_load_the_same(classifier, tmp_path):
  _, _, flat = classifier
  # vision_transformer: posemb in a module with a row for the class token, pre-linen block names.
  row = np.random.default_rng(0).normal(size=(1, 1, flat['cls'].shape[-1])).astype(np.float32)
  old = {k.replace('LayerNorm_1', 'LayerNorm_2').replace('MlpBlock_0', 'MlpBlock_3')
         .replace('MultiHeadDotProductAttention_0', 'MultiHeadDotProductAttention_1'): v
         for k, v in flat.items() if k != 'pos_embedding'}
  old['Transformer/posembed_input/pos_embedding'] = np.concatenate(
      [row, flat['pos_embedding']], axis=1)
  np.savez(tmp_path / 'old.npz', **old)
  # The old model added `row` to the class token; this layout puts it into `cls`.
  expected = dict(flat, cls=flat['cls'] + row)
  np.savez(tmp_path / 'bv.npz', **expected)
  # big_vision training checkpoint: params beside the optimizer state.
  np.savez(tmp_path / 'ckpt.npz', **{f'params/{k}': v for k, v in expected.items()},
           **{'opt/0/mu/embedding/kernel': expected['embedding/kernel']})

  fresh = _init(heads.build_model(_config()), seed=1)
  reference = pretrained.load(fresh, tmp_path / 'bv.npz')
  for name in ('ckpt.npz', 'old.npz'):
    _assert_equal(pretrained.load(fresh, tmp_path / name), reference)
  _assert_equal(reference['trunk'], {'cls': expected['cls']})


def test_pos_embedding_is_resampled_to_a_larger_image(tmp_path):
  small = _init(heads.build_model(_config()), seed=0, size=32)  # test/8: a 4x4 grid.
  pretrained.save_npz(tmp_path / 'small.npz', small)
  big_model = heads.build_model(_config())
  loaded = pretrained.load(_init(big_model, seed=1, size=64), tmp_path / 'small.npz')

  old = np.asarray(small['trunk']['pos_embedding'])
  width = old.shape[-1]
  want = jax.image.resize(old.reshape(4, 4, width), (8, 8, width), 'bilinear').reshape(1, 64, width)
  np.testing.assert_allclose(loaded['trunk']['pos_embedding'], want, rtol=1e-6, atol=1e-7)
  _assert_equal(loaded['trunk']['Transformer'], small['trunk']['Transformer'])
  outputs, _ = big_model.apply({'params': loaded}, jnp.zeros((2, 64, 64, 3)))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(outputs))
  with pytest.raises(ValueError, match='not a square grid'):
    pretrained.resample_posemb(old, 60)


def test_errors_name_the_param_or_the_file(classifier, tmp_path):
  _, _, flat = classifier
  np.savez(tmp_path / 'bv.npz', **flat)
  wide = _init(models.build_trunk(dict(name='vit', variant='Ti/16', pool_type='tok')), seed=0)
  with pytest.raises(ValueError, match=r'trunk/\S+ has shape \(.*32.*\), the model wants .*192'):
    pretrained.load({'trunk': wide}, tmp_path / 'bv.npz')

  fresh = _init(heads.build_model(_config()), seed=1)
  np.savez(tmp_path / 'other.npz', **{'conv1/kernel': np.zeros((3, 3))})
  with pytest.raises(ValueError, match='none of its 1 params'):
    pretrained.load(fresh, tmp_path / 'other.npz')
  pretrained.save_npz(tmp_path / 'heads.npz', {k: v for k, v in fresh.items() if k != 'trunk'})
  with pytest.raises(ValueError, match='none of its'):  # Heads only, and heads are skipped.
    pretrained.load(fresh, tmp_path / 'heads.npz')

  np.savez(tmp_path / 'pickled.npz', **{'cls': np.array([{'code': 'runs on load'}])})
  with pytest.raises(ValueError, match=r'pickled\.npz: not a readable .npz.*pickle'):
    pretrained.load(fresh, tmp_path / 'pickled.npz')
  (tmp_path / 'torn.npz').write_bytes(b'PK\x03\x04 not really a zip')
  with pytest.raises(ValueError, match=r'torn\.npz: not a readable'):
    pretrained.load(fresh, tmp_path / 'torn.npz')
  with pytest.raises(FileNotFoundError, match='missing.npz'):
    pretrained.load(fresh, tmp_path / 'missing.npz')
  (tmp_path / 'empty_run').mkdir()
  with pytest.raises(FileNotFoundError, match='empty_run: no checkpoint'):
    pretrained.load(fresh, tmp_path / 'empty_run')


def test_from_a_bigvis_training_checkpoint(shapes_dir, tmp_path):
  config = helpers.tiny_config(shapes_dir, total_steps=2, checkpoint_every_steps=2)
  trained = jax.device_get(train.train(config, str(tmp_path))['params'])
  fresh = _init(heads.build_model(config), seed=7)

  everything = pretrained.load(fresh, tmp_path, skip='^$')
  _assert_equal(everything, trained)
  _assert_equal(pretrained.load(fresh, tmp_path / 'checkpoints' / '2', skip='^$'), trained)
  default = pretrained.load(fresh, tmp_path)
  _assert_equal(default['trunk'], trained['trunk'])
  _assert_equal(default, {k: v for k, v in fresh.items() if k.startswith('head_')})

  # save_npz writes big_vision names for the trunk and loads back to the same params.
  pretrained.save_npz(tmp_path / 'export.npz', trained)
  with np.load(tmp_path / 'export.npz') as f:
    names = set(f.files)
  assert 'embedding/kernel' in names and 'head_labels/Dense_0/kernel' in names
  assert not any(n.startswith('trunk/') for n in names)
  _assert_equal(pretrained.load(fresh, tmp_path / 'export.npz', skip='^$'), trained)


# --- The .npz layouts, pinned: written out here from big_vision's models/vit.py and the original
# vision_transformer repo's models.py (ViT-Ti/16, 224 px, 1000 classes), never derived from
# bigvis/pretrained.py, so a rename there cannot pass by renaming both sides.

D, HEADS, MLP, DEPTH = 192, 3, 768, 12


def _block_names(i, ln=('LayerNorm_0', 'LayerNorm_1'), attn='MultiHeadDotProductAttention_0',
                 mlp='MlpBlock_0'):
  b = f'Transformer/encoderblock_{i}'
  out = {f'{b}/{n}/{p}': (D,) for n in ln for p in ('scale', 'bias')}
  for qkv in ('query', 'key', 'value'):
    out[f'{b}/{attn}/{qkv}/kernel'] = (D, HEADS, D // HEADS)
    out[f'{b}/{attn}/{qkv}/bias'] = (HEADS, D // HEADS)
  out[f'{b}/{attn}/out/kernel'] = (HEADS, D // HEADS, D)
  out[f'{b}/{attn}/out/bias'] = (D,)
  out.update({f'{b}/{mlp}/Dense_0/kernel': (D, MLP), f'{b}/{mlp}/Dense_0/bias': (MLP,),
              f'{b}/{mlp}/Dense_1/kernel': (MLP, D), f'{b}/{mlp}/Dense_1/bias': (D,)})
  return out


BIG_VISION_VIT_TI16 = {
    'cls': (1, 1, D), 'embedding/kernel': (16, 16, 3, D), 'embedding/bias': (D,),
    'pos_embedding': (1, 196, D),  # no row for the class token
    'Transformer/encoder_norm/scale': (D,), 'Transformer/encoder_norm/bias': (D,),
    'head/kernel': (D, 1000), 'head/bias': (1000,),
    **{k: v for i in range(DEPTH) for k, v in _block_names(i).items()}}

# vision_transformer (pre-linen names: one counter over a block's submodules; the posemb in its
# own module, with a row for the class token).
VISION_TRANSFORMER_VIT_TI16 = {
    'cls': (1, 1, D), 'embedding/kernel': (16, 16, 3, D), 'embedding/bias': (D,),
    'Transformer/posembed_input/pos_embedding': (1, 197, D),
    'Transformer/encoder_norm/scale': (D,), 'Transformer/encoder_norm/bias': (D,),
    'head/kernel': (D, 1000), 'head/bias': (1000,),
    **{k: v for i in range(DEPTH) for k, v in _block_names(
        i, ln=('LayerNorm_0', 'LayerNorm_2'), attn='MultiHeadDotProductAttention_1',
        mlp='MlpBlock_3').items()}}


def _vit_ti16_224():
  c = helpers.tiny_config('')
  c.model.variant, c.model.pool_type = 'Ti/16', 'tok'
  return c


def test_save_npz_writes_the_big_vision_layout(tmp_path):
  trunk = models.build_trunk(_vit_ti16_224().model, num_classes=1000)
  params = _init(trunk, seed=0, size=224)
  pretrained.save_npz(tmp_path / 'ti16.npz', params)
  with np.load(tmp_path / 'ti16.npz') as z:
    written = {k: z[k].shape for k in z.files}
  assert written == BIG_VISION_VIT_TI16
  # timm's count for vit_tiny_patch16_224 is 5,717,416: 192 more, its class-token posemb row.
  assert sum(int(np.prod(s)) for s in written.values()) == 5_717_416 - 192


def test_the_vision_transformer_layout_loads_name_by_name(tmp_path):
  rng = np.random.default_rng(0)
  old = {k: rng.normal(size=s).astype(np.float32) for k, s in VISION_TRANSFORMER_VIT_TI16.items()}
  np.savez(tmp_path / 'old.npz', **old)
  c = _vit_ti16_224()
  fresh = jax.eval_shape(heads.build_model(c).init, jax.random.key(0),
                         jnp.zeros((1, 224, 224, 3)))['params']
  fresh = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), fresh)
  loaded = _flat(pretrained.load(fresh, tmp_path / 'old.npz'))
  renames = {'LayerNorm_2': 'LayerNorm_1', 'MultiHeadDotProductAttention_1':
             'MultiHeadDotProductAttention_0', 'MlpBlock_3': 'MlpBlock_0'}
  posemb = old['Transformer/posembed_input/pos_embedding']
  for name, value in old.items():
    if name.startswith('head/') or name == 'Transformer/posembed_input/pos_embedding':
      continue
    new = name
    for a, b in renames.items():
      new = new.replace(f'/{a}/', f'/{b}/')
    want = value + posemb[:, :1] if name == 'cls' else value  # the class token's posemb row
    np.testing.assert_array_equal(loaded[f'trunk/{new}'], want, err_msg=name)
  np.testing.assert_array_equal(loaded['trunk/pos_embedding'], posemb[:, 1:])
