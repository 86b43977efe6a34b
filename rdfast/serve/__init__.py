"""``rdfast serve``: the reward model behind an HTTP server for RL loops (optional extra ``rdfast[serve]``).

app.py holds the endpoints, groups.py the rank and GRPO-group requests, batcher.py the cross-request batching,
protocol.py the decoding and validation of request bodies, unpickle.py the restricted unpickler of the Flow-GRPO
protocol, metrics.py the Prometheus metrics and cli.py the command. The core never imports this package.
"""
