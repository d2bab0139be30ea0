// Package queue moves jobs, events and cancels between the platform daemons
// and the orchestrators. It carries opaque message bodies (JSON of package
// jobspec); it does not look inside them.
//
// Two implementations satisfy Queue: RabbitMQ (package queue/amqpq, for many
// hosts) and an in-process one (Memory, for solstice serve and solstice
// exec). One contract test suite (queuetest) runs against both.
package queue

import (
	"context"
	"errors"
)

// ErrNoRoute is returned by PublishJob when no orchestrator serves the
// label: no job queue for it has been declared. The caller should fail the
// job on its platform at once instead of letting it wait.
var ErrNoRoute = errors.New("no orchestrator serves this label")

// ErrClosed is returned by calls on a closed Queue.
var ErrClosed = errors.New("queue closed")

// Delivery is one received message. Exactly one of Ack or Nack must be
// called; both are safe to call after the queue reconnected (they then
// return an error and the message is delivered again).
type Delivery interface {
	Body() []byte
	// Redelivered reports that the message may have been delivered before.
	Redelivered() bool
	// Ack removes the message from the queue for good.
	Ack() error
	// Nack returns the message to the queue (requeue) or drops it.
	Nack(requeue bool) error
}

// Queue is the message transport.
//
// Messages are at least once: any delivery not acked before a consumer's
// context ends, its process dies or its connection drops is delivered again.
// Consumers de-duplicate (jobs by job id, events by job id and sequence).
//
// Cancelling the ctx of a Consume call stops that consumer and closes its
// channel; unacked deliveries return to their queue. Publish calls return
// only once the message is durable (publisher confirm) or with an error.
type Queue interface {
	// DeclareLabels makes sure a durable job queue exists for every label,
	// so publishing for them succeeds. Orchestrators call it for the labels
	// they serve before consuming.
	DeclareLabels(ctx context.Context, labels []string) error

	// PublishJob publishes a job for label. It returns ErrNoRoute when no
	// queue exists for the label.
	PublishJob(ctx context.Context, label string, body []byte) error

	// ConsumeJobs delivers jobs of the given labels. At most prefetch
	// deliveries are unacked at any time.
	ConsumeJobs(ctx context.Context, labels []string, prefetch int) (<-chan Delivery, error)

	// PublishEvent publishes an event for the daemon instance named by
	// route (jobspec.Source.Instance). Events of one route are delivered in
	// publish order.
	PublishEvent(ctx context.Context, route string, body []byte) error

	// ConsumeEvents delivers the events of route. The route's queue is
	// durable: events published while nobody consumes wait for the daemon.
	ConsumeEvents(ctx context.Context, route string) (<-chan Delivery, error)

	// PublishCancel publishes a cancel to every orchestrator.
	PublishCancel(ctx context.Context, body []byte) error

	// ConsumeCancels delivers cancels to the orchestrator named consumer.
	ConsumeCancels(ctx context.Context, consumer string) (<-chan Delivery, error)

	// Close releases the connection. Consumers' channels are closed.
	Close() error
}
