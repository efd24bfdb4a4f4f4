"""The engine as a Ray Serve application: many GPUs behind one address (``.[cluster]``).

- :mod:`engine.cluster.replica`: one replica per GPU, running the same engine code as the
  standalone process (its :class:`~engine.jobs.JobManager` in front of the generator, with its
  model cache, LoRA patcher and cost model). Serve's model multiplexing, keyed by the base
  model's file, sends each job to a replica that holds its model; what Serve evicts (least
  recently used) is evicted from that replica's model cache.
- :mod:`engine.cluster.ingress`: the HTTP face, the same API as :mod:`engine.server` (the bot's
  :class:`~engine.client.EngineClient` and the job protocol work unchanged). It keeps each job's
  in-flight call to its replica, so status, events and cancel reach the replica that runs it.
- :mod:`engine.cluster.app`: ``build``, the import path of a ``serve`` config
  (``deploy/serve.yaml``).

Only this package imports Ray; nothing outside it does, and the bot never imports it.
"""
