"""A GCS JSON-API server on this machine (gcp-storage-emulator, in memory: tests/gcs_server.py).

Google's clients, gcsfs and tensorstore (Orbax's array writer) all reach it through environment
variables; `env()` gives them, for this process and for trainer subprocesses.
"""
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request

from tests import helpers


class Emulator:
  def __init__(self, port):
    self.url = f'http://127.0.0.1:{port}'

  def env(self):
    return {'STORAGE_EMULATOR_HOST': self.url,  # google-cloud-storage, gcsfs
            'TENSORSTORE_GCS_HTTP_URL': self.url,  # tensorstore's gcs kvstore (Orbax)
            'GOOGLE_CLOUD_PROJECT': 'bigvis-test'}

  def make_bucket(self, name):
    req = urllib.request.Request(f'{self.url}/storage/v1/b?project=bigvis-test',
                                 data=f'{{"name": "{name}"}}'.encode(), method='POST',
                                 headers={'Content-Type': 'application/json'})
    urllib.request.urlopen(req, timeout=10).read()
    return f'gs://{name}'

  def list(self, bucket, prefix=''):
    """Object names under `prefix`, asked of the server itself (gcsfs caches its listings)."""
    query = urllib.parse.urlencode({'prefix': prefix})
    with urllib.request.urlopen(f'{self.url}/storage/v1/b/{bucket}/o?{query}', timeout=10) as r:
      return [item['name'] for item in json.load(r).get('items', [])]


@contextlib.contextmanager
def emulator():
  """Starts the server on a free loopback port, sets its variables here; stops it after."""
  port = helpers.free_port()
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.Popen([sys.executable, '-m', 'tests.gcs_server', str(port)], cwd=repo,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  emu = Emulator(port)
  saved = {k: os.environ.get(k) for k in emu.env()}
  try:
    deadline = time.time() + 30
    while True:
      try:
        urllib.request.urlopen(f'{emu.url}/storage/v1/b?project=bigvis-test', timeout=1).read()
        break
      except OSError:
        if proc.poll() is not None or time.time() > deadline:
          raise RuntimeError('gcp-storage-emulator did not start') from None
        time.sleep(0.1)
    os.environ.update(emu.env())
    yield emu
  finally:
    proc.terminate()
    proc.wait(timeout=10)
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
