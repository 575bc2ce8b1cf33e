"""Payment retries on a schedule (1 s, 10 s, 60 s), then a parking lot; two ways to wait.

--via ttl      three retry queues with a message TTL each, dead-lettering back to the work
               exchange; the attempt count and the whole history are in x-death.
--via delayed  one x-delayed-message exchange (RabbitMQ's delayed-message plugin; built into
               Warren): the worker republishes with x-delay and an x-attempt header.

The work queue is a quorum queue with x-delivery-limit: a worker that crashes holding an order gets
it back redelivered, with x-delivery-count one higher; past the limit it is dead-lettered to
the parking lot too. --scale shrinks the delays (the test runs at 0.01).

Usage: retry_schedule.py --url URL [--via ttl|delayed] [--scale 1.0] [--orders 3] [--fail 0]
"""

import argparse
import json

import pika

DELAYS_MS = (1000, 10_000, 60_000)
WORK, PARKING = "payments.work", "payments.parking"


def declare(channel, via, scale):
    channel.exchange_declare("payments", "direct", durable=True)
    channel.queue_declare(
        WORK,
        durable=True,
        arguments={
            "x-queue-type": "quorum",  # counts deliveries, in RabbitMQ too
            "x-delivery-limit": 5,  # a poison order that kills workers ends in the parking lot
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": PARKING,
        },
    )
    channel.queue_bind(WORK, "payments", "charge")
    channel.queue_declare(PARKING, durable=True)
    if via == "ttl":
        channel.exchange_declare("payments.retry", "direct", durable=True)
        for tier, delay in enumerate(DELAYS_MS):
            queue = f"payments.retry.{tier}"
            channel.queue_declare(
                queue,
                durable=True,
                arguments={
                    "x-message-ttl": int(delay * scale),
                    "x-dead-letter-exchange": "payments",
                    "x-dead-letter-routing-key": "charge",
                },
            )
            channel.queue_bind(queue, "payments.retry", str(tier))
    else:
        channel.exchange_declare(
            "payments.later", "x-delayed-message", durable=True,
            arguments={"x-delayed-type": "direct"},
        )  # fmt: skip
        channel.queue_bind(WORK, "payments.later", "charge")


def attempts_so_far(properties, via):
    headers = properties.headers or {}
    if via == "delayed":
        return int(headers.get("x-attempt", 0))
    return sum(int(d["count"]) for d in headers.get("x-death", []) if d["reason"] == "expired")


def retry(channel, properties, body, attempt, via, scale):
    """Schedule the next attempt: through a TTL queue, or the delayed exchange."""
    persistent = pika.DeliveryMode.Persistent
    if via == "ttl":
        channel.basic_publish(
            "payments.retry", str(attempt), body,
            pika.BasicProperties(delivery_mode=persistent, headers=properties.headers),
        )  # fmt: skip
    else:
        headers = dict(properties.headers or {})
        headers["x-attempt"] = attempt + 1
        headers["x-delay"] = int(DELAYS_MS[attempt] * scale)
        channel.basic_publish(
            "payments.later", "charge", body,
            pika.BasicProperties(delivery_mode=persistent, headers=headers),
        )  # fmt: skip


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="amqp://guest:guest@localhost:5672/%2F")
    parser.add_argument("--via", choices=("ttl", "delayed"), default="ttl")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--orders", type=int, default=3)
    parser.add_argument("--fail", default="0", help="orders whose charge always fails")
    args = parser.parse_args()
    failing = {int(n) for n in args.fail.split(",") if n}

    connection = pika.BlockingConnection(pika.URLParameters(args.url))
    channel = connection.channel()
    declare(channel, args.via, args.scale)
    channel.confirm_delivery()
    for number in range(args.orders):
        order = json.dumps({"order_id": number}).encode()
        channel.basic_publish("payments", "charge", order, pika.BasicProperties(delivery_mode=2))
    done = set()

    def handle(ch, method, properties, body):
        number = json.loads(body)["order_id"]
        attempt = attempts_so_far(properties, args.via)
        if number not in failing:
            print(f"charged {number} after {attempt} retries")
        elif attempt < len(DELAYS_MS):
            retry(ch, properties, body, attempt, args.via, args.scale)
            print(f"retry {number} in {DELAYS_MS[attempt]} ms")
            ch.basic_ack(method.delivery_tag)
            return
        else:
            ch.basic_publish("", PARKING, body, properties)  # with its whole history
            print(f"parked {number} after {attempt} retries")
        ch.basic_ack(method.delivery_tag)
        done.add(number)
        if len(done) == args.orders:
            ch.stop_consuming()

    channel.basic_qos(prefetch_count=10)
    channel.basic_consume(WORK, handle)
    channel.start_consuming()
    connection.close()


if __name__ == "__main__":
    main()
