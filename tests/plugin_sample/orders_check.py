"""A project's own tests, as they look with Warren's pytest plugin instead of a RabbitMQ
container: nothing but the `amqp_url` fixture. (tests/integration/test_pytest_plugin.py copies
this file into an empty directory as test_orders.py and runs pytest there.)"""

import pika


def test_an_order_round_trips(amqp_url):
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.queue_declare("orders", durable=True)
    channel.confirm_delivery()
    channel.basic_publish("", "orders", b"order-1", pika.BasicProperties(delivery_mode=2))
    _, _, body = channel.basic_get("orders", auto_ack=True)
    assert body == b"order-1"
    connection.close()


def test_the_session_broker_is_shared(amqp_broker, amqp_url):
    assert amqp_broker.url == amqp_url
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    # the queue the first test declared is still there: one broker for the session
    assert channel.queue_declare("orders", passive=True).method.message_count == 0
    connection.close()
