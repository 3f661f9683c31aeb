"""The durable queue: the only contract between intake, delivery and the operator tools."""
