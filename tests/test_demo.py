"""The demo's seed summary (tools/demo.py --seeds): the mean and spread it reports and its verdicts,
from per-seed figures as the demo collects them. The demo itself is `make demo`, not a test."""
import argparse

import pytest

from bigvis.tools import demo


def _figures(r1, skin):
  return {name: 0.5 for name in demo.HEADLINE} | {'float_exact recall@1': r1,
                                                  'skin_tone accuracy': skin}


def test_seed_summary_calls_a_lead_a_finding_only_past_both_spreads():
  per_seed = {0: {'finetuned': _figures(0.30, 0.60), 'scratch': _figures(0.10, 0.62)},
              1: {'finetuned': _figures(0.32, 0.62), 'scratch': _figures(0.12, 0.70)},
              2: {'finetuned': _figures(0.28, 0.61), 'scratch': _figures(0.08, 0.66)}}
  summary = demo.seed_summary(per_seed)
  r1 = summary['float_exact recall@1']
  assert r1['finetuned']['values'] == [0.30, 0.32, 0.28]
  assert r1['finetuned']['mean'] == pytest.approx(0.30)
  assert r1['lead'] == pytest.approx(0.20)
  assert r1['spread'] == pytest.approx(2 * (0.02 * (2 / 3) ** 0.5))  # population std, twice
  assert r1['finding'] and demo.verdict(r1) == '**finding**: fine-tuned higher'
  skin = summary['skin_tone accuracy']  # scratch ahead by 0.05, spreads 0.008 + 0.033
  assert skin['finding'] and demo.verdict(skin) == '**finding**: scratch higher'
  level = summary['category accuracy']
  assert not level['finding'] and demo.verdict(level) == 'within spread'
  report = {'seeds': [0, 1, 2], 'seed_summary': summary, 'figures': per_seed[0],
            'wall_seconds': {'total': 1.0}}
  table = demo.render(report)
  assert '| float_exact recall@1 | 0.300 ± 0.016 | 0.100 ± 0.016 | +0.200 | 0.033 |' in table
  # One seed: no spread, so nothing is called a finding.
  one = demo.seed_summary({0: per_seed[0]})
  assert not any(row['finding'] for row in one.values())


def test_seeds_flag_refuses_repeats_and_non_integers():
  assert demo.parse_seeds('2,0,1') == [2, 0, 1]
  with pytest.raises(argparse.ArgumentTypeError, match='named twice'):
    demo.parse_seeds('0,0')
  with pytest.raises(argparse.ArgumentTypeError, match='comma-separated integers'):
    demo.parse_seeds('0,a')
  assert demo.seed_dir('w', [0], 0) == 'w' and demo.seed_dir('w', [0, 3], 3) == 'w/seed_3'
