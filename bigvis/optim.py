"""The optax optimizer and learning-rate schedule a config names."""
import jax
import optax


def schedule(opt, total_steps):
  """Linear warmup to `lr`, then cosine or linear decay to `lr * end_lr_factor`, or constant."""
  warmup = min(opt.warmup_steps, total_steps)
  decay_steps = max(total_steps - warmup, 1)
  end = opt.lr * opt.end_lr_factor
  if opt.schedule == 'cosine':
    decay = optax.cosine_decay_schedule(opt.lr, decay_steps, alpha=opt.end_lr_factor)
  elif opt.schedule == 'linear':
    decay = optax.linear_schedule(opt.lr, end, decay_steps)
  else:
    decay = optax.constant_schedule(opt.lr)
  if not warmup:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, opt.lr, warmup), decay], [warmup])


def decay_mask(params, which):
  """Weight decay on kernels only (not biases, norms, embeddings' position/class tokens), on all
  params, or on none."""
  def keep(path, _):
    name = str(getattr(path[-1], 'key', path[-1]))
    return which == 'all' or (which == 'kernels' and name in ('kernel', 'proxies'))
  return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(opt, total_steps):
  """Returns (optax transformation, schedule)."""
  lr = schedule(opt, total_steps)
  mask = lambda params: decay_mask(params, opt.decay_mask)
  wd = 0.0 if opt.decay_mask == 'none' else opt.weight_decay
  if opt.name == 'adamw':
    tx = optax.adamw(lr, b1=opt.b1, b2=opt.b2, weight_decay=wd, mask=mask)
  elif opt.name == 'lamb':
    tx = optax.lamb(lr, b1=opt.b1, b2=opt.b2, weight_decay=wd, mask=mask)
  else:  # sgd with momentum; decoupled decay added before the learning-rate scaling.
    tx = optax.chain(optax.add_decayed_weights(wd, mask),
                     optax.sgd(lr, momentum=opt.momentum))
  if opt.clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(opt.clip_norm), tx)
  return tx, lr
