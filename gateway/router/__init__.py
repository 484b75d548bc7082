"""`gateway serve --router`: one OpenAI endpoint in front of a cluster's node gateways.

The router serves no model itself. It reads each node's /v1/models (which models, their states
and queues), forwards each request to a node that serves its model (the least busy replica),
streams the answer back as it comes, and skips nodes that stop answering.
"""
