"""`python -m tests.gcs_server PORT`: gcp-storage-emulator in memory on 127.0.0.1:PORT, with one fix.

The emulator's media downloads lack the `x-goog-generation` header that real GCS sends; tensorstore
(Orbax's array writer) reads an object's generation from it for the conditional writes of its
OCDBT manifest, and fails with 'Malformed StorageGeneration' without it. This adds the header.
"""
import sys
import time

from gcp_storage_emulator.handlers import objects  # Before `server`, which binds the handlers.

_download = objects.download


def _download_with_generation(request, response, storage, *args, **kwargs):
  try:
    obj = storage.get_file_obj(request.params['bucket_name'], request.params['object_id'])
    response['x-goog-generation'] = str(obj['generation'])
    response['x-goog-metageneration'] = str(obj.get('metageneration', '1'))
  except Exception:  # pylint: disable=broad-except  (not found: the handler answers 404)
    pass
  return _download(request, response, storage, *args, **kwargs)


objects.download = _download_with_generation

from gcp_storage_emulator import server  # noqa: E402


def main():
  srv = server.create_server('127.0.0.1', int(sys.argv[1]), in_memory=True)
  srv.start()
  try:
    while True:
      time.sleep(3600)
  finally:
    srv.stop()


if __name__ == '__main__':
  main()
