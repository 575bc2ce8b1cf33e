"""Payment retries with dead-lettering: work queue -> retry queue with a TTL -> work queue,
and a parking lot after MAX_ATTEMPTS, read from x-death. Runs unchanged against RabbitMQ.

Usage: retry_worker.py [--url URL] [--retry-ms 1000] [--max-attempts 3] [--fail 0,1 --flaky 2]
Orders listed in --fail never succeed (they end in the parking lot); those in --flaky fail once.
"""

import argparse
import json

import pika

WORK, RETRY, PARKING = "payment_work", "payment_retry", "payment_parking_lot"


def declare_topology(channel, retry_ms):
    channel.exchange_declare("payments", "direct", durable=True)
    channel.exchange_declare("payments.retry", "direct", durable=True)
    # A rejected order goes to the retry exchange with its routing key ("charge")...
    channel.queue_declare(
        WORK, durable=True, arguments={"x-dead-letter-exchange": "payments.retry"}
    )
    channel.queue_bind(WORK, "payments", "charge")
    # ...waits out the TTL in the retry queue, then expires back to the work exchange.
    channel.queue_declare(
        RETRY,
        durable=True,
        arguments={"x-message-ttl": retry_ms, "x-dead-letter-exchange": "payments"},
    )
    channel.queue_bind(RETRY, "payments.retry", "charge")
    channel.queue_declare(PARKING, durable=True)


def attempts(properties):
    """How often this order was rejected by the work queue before: x-death's count."""
    for death in (properties.headers or {}).get("x-death", []):
        if death["queue"] == WORK and death["reason"] == "rejected":
            return int(death["count"])
    return 0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="amqp://guest:guest@localhost:5672/%2F")
    parser.add_argument("--retry-ms", type=int, default=1000)
    parser.add_argument("--max-attempts", type=int, default=3)
    parser.add_argument("--orders", type=int, default=4)
    parser.add_argument("--fail", default="0", help="orders that always fail")
    parser.add_argument("--flaky", default="1", help="orders that fail on the first attempt")
    args = parser.parse_args()
    always = {int(n) for n in args.fail.split(",") if n}
    flaky = {int(n) for n in args.flaky.split(",") if n}

    connection = pika.BlockingConnection(pika.URLParameters(args.url))
    channel = connection.channel()
    declare_topology(channel, args.retry_ms)
    channel.confirm_delivery()
    for number in range(args.orders):
        order = json.dumps({"order_id": number, "amount_cents": 1000 + number})
        persistent = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
        channel.basic_publish("payments", "charge", order.encode(), persistent)

    done = set()

    def handle(ch, method, properties, body):
        order = json.loads(body)
        number, tried = order["order_id"], attempts(properties)
        if number in always or (number in flaky and tried == 0):
            if tried + 1 >= args.max_attempts:  # give up: park it with its whole history
                ch.basic_publish("", PARKING, body, properties)
                ch.basic_ack(method.delivery_tag)
                print(f"parked {number} after {tried + 1} attempts")
                done.add(number)
            else:
                ch.basic_reject(method.delivery_tag, requeue=False)  # retried after the TTL
                print(f"failed {number} (attempt {tried + 1})")
        else:
            ch.basic_ack(method.delivery_tag)
            print(f"charged {number} (attempt {tried + 1})")
            done.add(number)
        if len(done) == args.orders:
            ch.stop_consuming()

    channel.basic_qos(prefetch_count=10)
    channel.basic_consume(WORK, handle)
    channel.start_consuming()
    connection.close()


if __name__ == "__main__":
    main()
