"""RabbitMQ's management HTTP API (what rabbitmqadmin, monitoring scripts and the web console
talk to), served by the broker on its own loop: listings, declares, publish and get, users,
vhosts, permissions, policies and definitions."""
