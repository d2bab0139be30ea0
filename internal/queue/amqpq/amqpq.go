// Package amqpq is the RabbitMQ implementation of queue.Queue, on
// github.com/rabbitmq/amqp091-go, for platform daemons and orchestrators on
// many hosts.
//
// Topology, with prefix Options.Prefix (default "solstice"):
//
//   - Jobs: direct exchange <prefix>.jobs. DeclareLabels declares, for every
//     label, a durable quorum queue <prefix>.jobs.<label> bound with routing
//     key label. PublishJob publishes with mandatory set, so a job for a
//     label no queue is bound to comes back (basic.return) and PublishJob
//     returns an error wrapping queue.ErrNoRoute. ConsumeJobs declares the
//     queues of its labels as well, so a consumer that re-subscribes after a
//     broker lost its queues gets them back.
//   - Events: direct exchange <prefix>.events and, per route, a durable
//     quorum queue <prefix>.events.<route> with single active consumer,
//     declared by both PublishEvent and ConsumeEvents: events published
//     while nobody consumes wait, and only one consumer of a route receives
//     at a time, so events arrive in publish order.
//   - Cancels: fanout exchange <prefix>.cancels and, per consumer name, a
//     durable quorum queue <prefix>.cancels.<consumer> bound to it. The
//     queue outlives restarts of its orchestrator (cancels published while
//     it is down wait for it), and is deleted by the broker once it had no
//     consumer for cancelQueueExpiry (x-expires), so queues of retired
//     orchestrators do not pile up cancels forever. This differs from the
//     in-process queue, which drops cancels for consumers that do not run.
//
// Every message is persistent and every publish waits for the publisher
// confirm. Publishes are serialized on one confirm-mode channel, guarded by
// a mutex: one message is in flight at a time, which keeps basic.return
// matching trivial (the broker sends the return before the ack).
//
// Every Consume call has its own channel, with basic.qos set to its
// prefetch, and one goroutine that turns amqp deliveries into
// queue.Delivery values. RabbitMQ applies a per-consumer prefetch to each
// queue of a several-label job consumer, so the goroutine also holds back
// deliveries while prefetch of them are unacked: the contract's limit holds
// for the caller. Event and cancel consumers use a prefetch of
// streamPrefetch.
//
// The Queue keeps one connection. When it drops (a broker restart), a
// supervisor goroutine reconnects with exponential backoff (minBackoff to
// maxBackoff, with jitter) and declares the exchanges and the declared
// labels' queues again. Publishes during the outage wait and retry until
// their ctx ends (a message whose confirm was lost with the connection is
// published again: at least once). Consumers subscribe again on the new
// connection and keep their output channel; Ack and Nack of deliveries
// received on a dead channel return an error, and the broker delivers those
// messages again.
package amqpq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/solstice-ci/solstice/internal/queue"
)

// Tuning of the implementation.
const (
	// minBackoff and maxBackoff bound the wait between reconnect and
	// re-subscribe attempts; the wait doubles from one to the other.
	minBackoff = 100 * time.Millisecond
	maxBackoff = 5 * time.Second
	// dialTimeout bounds the TCP connect and the AMQP handshake.
	dialTimeout = 30 * time.Second
	// confirmTimeout bounds the wait for a publisher confirm on a live
	// connection.
	confirmTimeout = 30 * time.Second
	// lostGrace is how long an operation that failed waits for the library
	// to notice that the connection is gone, before treating the failure
	// as an error of the channel alone.
	lostGrace = 200 * time.Millisecond
	// streamPrefetch is the prefetch of event and cancel consumers.
	streamPrefetch = 256
	// cancelQueueExpiry is how long a cancel queue lives without consumers.
	cancelQueueExpiry = 24 * time.Hour
)

// errSettled is returned by Ack and Nack on a delivery that was already
// acked or nacked (sending a second ack would make the broker close the
// channel).
var errSettled = errors.New("amqpq: delivery already acked or nacked")

// Options configure a Queue.
type Options struct {
	// Prefix starts the names of every exchange and queue; default
	// "solstice".
	Prefix string
	// Log receives connection losses and recoveries; default: discarded.
	Log *slog.Logger
}

// Queue is a queue.Queue on a RabbitMQ broker. Create it with Open. It is
// safe for concurrent use.
type Queue struct {
	url    string // guarded by mu (tests change it)
	prefix string
	log    *slog.Logger

	life context.Context    // ends when Close is called
	stop context.CancelFunc // ends life

	mu     sync.Mutex
	closed bool
	cur    *session            // nil while reconnecting
	ready  chan struct{}       // closed once cur is set
	labels map[string]struct{} // declared labels, declared again on reconnect
	queues map[string]struct{} // every queue declared, for tests

	pubMu sync.Mutex // serializes publishes
	pub   *publisher // guarded by pubMu

	msgID atomic.Uint64

	consumers sync.WaitGroup // consumer goroutines
	super     sync.WaitGroup // the supervisor
}

var _ queue.Queue = (*Queue)(nil)

// session is one connection.
type session struct {
	conn   *amqp.Connection
	nc     net.Conn         // under conn, for tests that break it
	closed chan *amqp.Error // conn.NotifyClose
	dead   chan struct{}    // closed by the supervisor once conn is gone
}

// Open connects to the broker at url (amqp:// or amqps://) and declares the
// exchanges. It does not retry: a broker that cannot be reached now is an
// error; later connection losses are recovered.
func Open(ctx context.Context, url string, opts Options) (*Queue, error) {
	if opts.Prefix == "" {
		opts.Prefix = "solstice"
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	q := &Queue{
		url:    url,
		prefix: opts.Prefix,
		log:    opts.Log.With("component", "amqpq", "prefix", opts.Prefix),
		labels: make(map[string]struct{}),
		queues: make(map[string]struct{}),
	}
	q.life, q.stop = context.WithCancel(context.Background())
	s, err := q.connect(ctx)
	if err != nil {
		q.stop()
		return nil, fmt.Errorf("opening amqp queue: %w", err)
	}
	q.cur = s
	q.ready = make(chan struct{})
	close(q.ready)
	q.super.Add(1)
	go q.supervise(s)
	return q, nil
}

// Names of exchanges and queues.
func (q *Queue) jobsExchange() string           { return q.prefix + ".jobs" }
func (q *Queue) eventsExchange() string         { return q.prefix + ".events" }
func (q *Queue) cancelsExchange() string        { return q.prefix + ".cancels" }
func (q *Queue) jobQueue(label string) string   { return q.prefix + ".jobs." + label }
func (q *Queue) eventQueue(route string) string { return q.prefix + ".events." + route }
func (q *Queue) cancelQueue(name string) string { return q.prefix + ".cancels." + name }

// noteQueue records that q declared queue name (the tests delete them).
func (q *Queue) noteQueue(name string) {
	q.mu.Lock()
	q.queues[name] = struct{}{}
	q.mu.Unlock()
}

func (q *Queue) isClosed() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.closed
}

// quorum returns the arguments of a quorum queue, plus extra.
func quorum(extra amqp.Table) amqp.Table {
	t := amqp.Table{"x-queue-type": "quorum"}
	maps.Copy(t, extra)
	return t
}

// jitter returns a random duration between d/2 and d.
func jitter(d time.Duration) time.Duration { return d/2 + rand.N(d/2+1) }

// nextBackoff doubles d, up to maxBackoff.
func nextBackoff(d time.Duration) time.Duration { return min(2*d, maxBackoff) }

// connect dials the broker and declares the exchanges and the job queues
// of the declared labels.
func (q *Queue) connect(ctx context.Context) (*session, error) {
	var (
		nc        net.Conn
		stopAbort = func() bool { return true }
	)
	props := amqp.NewConnectionProperties()
	host, _ := os.Hostname()
	props.SetClientConnectionName(fmt.Sprintf("%s amqpq %s[%d]", q.prefix, host, os.Getpid()))
	q.mu.Lock()
	url := q.url
	q.mu.Unlock()
	conn, err := amqp.DialConfig(url, amqp.Config{
		Properties: props,
		Dial: func(network, addr string) (net.Conn, error) {
			d := net.Dialer{Timeout: dialTimeout}
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			// The library clears the deadline after the handshake.
			if err := c.SetDeadline(time.Now().Add(dialTimeout)); err != nil {
				_ = c.Close()
				return nil, err
			}
			// Cancelling ctx aborts the handshake.
			stopAbort = context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
			nc = c
			return c, nil
		},
	})
	aborted := !stopAbort()
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("connecting to the broker: %w", ctx.Err())
		}
		return nil, fmt.Errorf("connecting to the broker: %w", err)
	}
	if aborted {
		_ = conn.Close()
		return nil, fmt.Errorf("connecting to the broker: %w", ctx.Err())
	}
	s := &session{
		conn:   conn,
		nc:     nc,
		closed: conn.NotifyClose(make(chan *amqp.Error, 1)),
		dead:   make(chan struct{}),
	}
	if err := q.declareTopology(s); err != nil {
		_ = conn.Close()
		return nil, err
	}
	return s, nil
}

// declareTopology declares the exchanges and the queues of the declared
// labels on a fresh connection.
func (q *Queue) declareTopology(s *session) error {
	ch, err := s.conn.Channel()
	if err != nil {
		return fmt.Errorf("opening a channel to declare exchanges: %w", err)
	}
	defer func() { _ = ch.Close() }()
	for name, kind := range map[string]string{
		q.jobsExchange():    amqp.ExchangeDirect,
		q.eventsExchange():  amqp.ExchangeDirect,
		q.cancelsExchange(): amqp.ExchangeFanout,
	} {
		if err := ch.ExchangeDeclare(name, kind, true, false, false, false, nil); err != nil {
			return fmt.Errorf("declaring exchange %s: %w", name, err)
		}
	}
	q.mu.Lock()
	labels := slices.Sorted(maps.Keys(q.labels))
	q.mu.Unlock()
	for _, l := range labels {
		if err := q.declareJobQueue(ch, l); err != nil {
			// Not fatal: the next DeclareLabels or ConsumeJobs tries again.
			q.log.Warn("declaring a job queue again after reconnecting failed", "label", l, "err", err)
			if ch.IsClosed() {
				return fmt.Errorf("declaring the job queue of label %q: %w", l, err)
			}
		}
	}
	return nil
}

// declareJobQueue declares the job queue of label and binds it.
func (q *Queue) declareJobQueue(ch *amqp.Channel, label string) error {
	name := q.jobQueue(label)
	q.noteQueue(name)
	if _, err := ch.QueueDeclare(name, true, false, false, false, quorum(nil)); err != nil {
		return fmt.Errorf("declaring queue %s: %w", name, err)
	}
	if err := ch.QueueBind(name, label, q.jobsExchange(), false, nil); err != nil {
		return fmt.Errorf("binding queue %s: %w", name, err)
	}
	return nil
}

// declareEventQueue declares the event queue of route and binds it.
func (q *Queue) declareEventQueue(ch *amqp.Channel, route string) error {
	name := q.eventQueue(route)
	q.noteQueue(name)
	if _, err := ch.QueueDeclare(name, true, false, false, false, quorum(amqp.Table{"x-single-active-consumer": true})); err != nil {
		return fmt.Errorf("declaring queue %s: %w", name, err)
	}
	if err := ch.QueueBind(name, route, q.eventsExchange(), false, nil); err != nil {
		return fmt.Errorf("binding queue %s: %w", name, err)
	}
	return nil
}

// declareCancelQueue declares the cancel queue of consumer name and binds
// it to the fanout exchange.
func (q *Queue) declareCancelQueue(ch *amqp.Channel, consumer string) error {
	name := q.cancelQueue(consumer)
	q.noteQueue(name)
	args := quorum(amqp.Table{"x-expires": cancelQueueExpiry.Milliseconds()})
	if _, err := ch.QueueDeclare(name, true, false, false, false, args); err != nil {
		return fmt.Errorf("declaring queue %s: %w", name, err)
	}
	if err := ch.QueueBind(name, "", q.cancelsExchange(), false, nil); err != nil {
		return fmt.Errorf("binding queue %s: %w", name, err)
	}
	return nil
}

// supervise watches the connection of s and replaces it when it drops,
// until the Queue is closed.
func (q *Queue) supervise(s *session) {
	defer q.super.Done()
	for s != nil {
		err := <-s.closed
		q.mu.Lock()
		if q.cur == s {
			q.cur = nil
			q.ready = make(chan struct{})
		}
		closed := q.closed
		q.mu.Unlock()
		close(s.dead)
		if closed {
			return
		}
		if err != nil {
			q.log.Warn("connection to the broker lost; reconnecting", "err", err)
		} else {
			q.log.Warn("connection to the broker closed; reconnecting")
		}
		s = q.reconnect()
	}
}

// reconnect connects again, with backoff, and installs the new session. It
// returns nil when the Queue was closed meanwhile. Even the first attempt
// waits a little (jitter of minBackoff), so clients of a restarted broker
// do not all reconnect at the same instant.
func (q *Queue) reconnect() *session {
	delay := minBackoff
	for attempt := 1; ; attempt++ {
		select {
		case <-time.After(jitter(delay)):
		case <-q.life.Done():
			return nil
		}
		s, err := q.connect(q.life)
		if err == nil {
			q.mu.Lock()
			if q.closed {
				q.mu.Unlock()
				_ = s.conn.Close()
				return nil
			}
			q.cur = s
			close(q.ready)
			q.mu.Unlock()
			q.log.Info("reconnected to the broker", "attempts", attempt)
			return s
		}
		if q.life.Err() != nil {
			return nil
		}
		delay = nextBackoff(delay)
		q.log.Warn("reconnecting to the broker failed", "attempt", attempt, "err", err, "next_in_about", delay)
	}
}

// session returns the current session, waiting while the Queue reconnects.
func (q *Queue) session(ctx context.Context) (*session, error) {
	for {
		q.mu.Lock()
		if q.closed {
			q.mu.Unlock()
			return nil, queue.ErrClosed
		}
		s, ready := q.cur, q.ready
		q.mu.Unlock()
		if s != nil {
			return s, nil
		}
		select {
		case <-ready:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-q.life.Done():
			return nil, queue.ErrClosed
		}
	}
}

// lost reports whether the connection of s is gone, giving the library a
// moment to notice a failed write.
func (q *Queue) lost(s *session) bool {
	if s.conn.IsClosed() {
		return true
	}
	select {
	case <-s.dead:
		return true
	case <-time.After(lostGrace):
		return s.conn.IsClosed()
	}
}

// awaitDead waits until the supervisor noticed that the connection of s is
// gone (so session returns another one), ctx ends or the Queue closes.
func (q *Queue) awaitDead(ctx context.Context, s *session) error {
	select {
	case <-s.dead:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-q.life.Done():
		return queue.ErrClosed
	}
}

// withChannel runs fn on a new channel, again on the next connection if
// the connection drops.
func (q *Queue) withChannel(ctx context.Context, fn func(ch *amqp.Channel) error) error {
	for {
		s, err := q.session(ctx)
		if err != nil {
			return err
		}
		ch, err := s.conn.Channel()
		if err == nil {
			err = fn(ch)
			_ = ch.Close()
			if err == nil {
				return nil
			}
		}
		if !q.lost(s) {
			return err
		}
		if werr := q.awaitDead(ctx, s); werr != nil {
			return fmt.Errorf("%w (after %w)", werr, err)
		}
	}
}

// DeclareLabels declares the job queues of labels.
func (q *Queue) DeclareLabels(ctx context.Context, labels []string) error {
	if err := checkLabels(labels); err != nil {
		return fmt.Errorf("declaring labels: %w", err)
	}
	err := q.withChannel(ctx, func(ch *amqp.Channel) error {
		for _, l := range labels {
			if err := q.declareJobQueue(ch, l); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("declaring labels %q: %w", labels, err)
	}
	q.mu.Lock()
	for _, l := range labels {
		q.labels[l] = struct{}{}
	}
	q.mu.Unlock()
	return nil
}

func checkLabels(labels []string) error {
	if slices.Contains(labels, "") {
		return errors.New("empty label")
	}
	return nil
}

// outgoing is one message to publish.
type outgoing struct {
	what      string // for errors
	exchange  string
	key       string
	mandatory bool
	route     string // event route whose queue must exist first, or ""
	body      []byte
	id        string
}

// publisher is the confirm-mode channel of a session.
type publisher struct {
	s       *session
	ch      *amqp.Channel
	returns chan amqp.Return
	routes  map[string]bool // event queues declared on ch
}

// PublishJob publishes a job for label. The error wraps queue.ErrNoRoute
// when no queue is bound for label.
func (q *Queue) PublishJob(ctx context.Context, label string, body []byte) error {
	return q.publish(ctx, &outgoing{
		what:      fmt.Sprintf("job for label %q", label),
		exchange:  q.jobsExchange(),
		key:       label,
		mandatory: true,
		body:      body,
	})
}

// PublishEvent publishes an event for route, declaring the route's queue
// first.
func (q *Queue) PublishEvent(ctx context.Context, route string, body []byte) error {
	return q.publish(ctx, &outgoing{
		what:     fmt.Sprintf("event for route %q", route),
		exchange: q.eventsExchange(),
		key:      route,
		route:    route,
		body:     body,
	})
}

// PublishCancel publishes a cancel to every cancel queue.
func (q *Queue) PublishCancel(ctx context.Context, body []byte) error {
	return q.publish(ctx, &outgoing{
		what:     "cancel",
		exchange: q.cancelsExchange(),
		body:     body,
	})
}

// publish publishes m and waits for its confirm, retrying on the next
// connection when the connection drops, until ctx ends.
func (q *Queue) publish(ctx context.Context, m *outgoing) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("publishing %s: %w", m.what, err)
	}
	m.id = strconv.FormatUint(q.msgID.Add(1), 10)
	for {
		dead, err := q.publishOnce(ctx, m)
		if dead == nil {
			if err != nil {
				return fmt.Errorf("publishing %s: %w", m.what, err)
			}
			return nil
		}
		q.log.Warn("publish interrupted by the connection loss; publishing again once reconnected", "what", m.what, "err", err)
		if werr := q.awaitDead(ctx, dead); werr != nil {
			return fmt.Errorf("publishing %s: %w (after %w)", m.what, werr, err)
		}
	}
}

// publishOnce publishes m on the current connection. When the connection
// dropped before the confirm arrived it returns its session, to retry on
// the next one.
func (q *Queue) publishOnce(ctx context.Context, m *outgoing) (dead *session, err error) {
	q.pubMu.Lock()
	defer q.pubMu.Unlock()
	s, err := q.session(ctx)
	if err != nil {
		return nil, err
	}
	retryIfLost := func(err error) (*session, error) {
		if ctx.Err() == nil && q.lost(s) {
			return s, err
		}
		return nil, err
	}
	p, err := q.publisherOn(s)
	if err != nil {
		return retryIfLost(err)
	}
	if m.route != "" && !p.routes[m.route] {
		if err := q.declareEventQueue(p.ch, m.route); err != nil {
			return retryIfLost(err)
		}
		p.routes[m.route] = true
	}
	p.returned("") // drop returns of earlier publishes that gave up waiting
	dc, err := p.ch.PublishWithDeferredConfirmWithContext(ctx, m.exchange, m.key, m.mandatory, false, amqp.Publishing{
		DeliveryMode: amqp.Persistent,
		MessageId:    m.id,
		Body:         m.body,
	})
	if err != nil {
		return retryIfLost(err)
	}
	wctx, cancel := context.WithTimeout(ctx, confirmTimeout)
	defer cancel()
	acked, err := dc.WaitContext(wctx)
	switch {
	case ctx.Err() != nil:
		return nil, fmt.Errorf("waiting for the publisher confirm: %w", ctx.Err())
	case err != nil:
		return nil, fmt.Errorf("no publisher confirm in %v", confirmTimeout)
	case !acked && p.ch.IsClosed():
		return retryIfLost(errors.New("channel closed before the publisher confirm arrived"))
	case !acked:
		return nil, errors.New("the broker refused the message (publisher nack)")
	}
	if r, ok := p.returned(m.id); ok {
		return nil, fmt.Errorf("returned by the broker (%d %s): %w", r.ReplyCode, r.ReplyText, queue.ErrNoRoute)
	}
	return nil, nil
}

// publisherOn returns the publishing channel on s, opening it if needed.
// Called with pubMu held.
func (q *Queue) publisherOn(s *session) (*publisher, error) {
	if p := q.pub; p != nil {
		if p.s == s && !p.ch.IsClosed() {
			return p, nil
		}
		_ = p.ch.Close()
		q.pub = nil
	}
	ch, err := s.conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("opening the publishing channel: %w", err)
	}
	if err := ch.Confirm(false); err != nil {
		_ = ch.Close()
		return nil, fmt.Errorf("putting the publishing channel in confirm mode: %w", err)
	}
	q.pub = &publisher{
		s:       s,
		ch:      ch,
		returns: ch.NotifyReturn(make(chan amqp.Return, 16)),
		routes:  make(map[string]bool),
	}
	return q.pub, nil
}

// returned drains the returned messages and reports the one with message
// id id, if any. The broker sends a basic.return before the confirm of the
// same message, and the library hands returns over before it resolves the
// confirm, so after the confirm the return, if any, is waiting.
func (p *publisher) returned(id string) (amqp.Return, bool) {
	for {
		select {
		case r, ok := <-p.returns:
			if !ok {
				return amqp.Return{}, false
			}
			if id != "" && r.MessageId == id {
				return r, true
			}
		default:
			return amqp.Return{}, false
		}
	}
}

// consumer describes one Consume call.
type consumer struct {
	what     string // for errors and logs
	prefetch int    // basic.qos, per amqp consumer
	limit    int    // most unacked deliveries handed out; 0: no limit
	// setup declares what the consumer needs and returns the queues to
	// consume.
	setup func(ch *amqp.Channel) ([]string, error)
}

// ConsumeJobs consumes the job queues of labels (declaring them).
func (q *Queue) ConsumeJobs(ctx context.Context, labels []string, prefetch int) (<-chan queue.Delivery, error) {
	if len(labels) == 0 {
		return nil, errors.New("consuming jobs: no labels")
	}
	if err := checkLabels(labels); err != nil {
		return nil, fmt.Errorf("consuming jobs: %w", err)
	}
	if prefetch < 1 {
		return nil, fmt.Errorf("consuming jobs: prefetch %d, must be at least 1", prefetch)
	}
	labels = slices.Compact(slices.Sorted(slices.Values(labels)))
	return q.consume(ctx, &consumer{
		what:     fmt.Sprintf("jobs of labels %q", labels),
		prefetch: prefetch,
		limit:    prefetch,
		setup: func(ch *amqp.Channel) ([]string, error) {
			var names []string
			for _, l := range labels {
				if err := q.declareJobQueue(ch, l); err != nil {
					return nil, err
				}
				names = append(names, q.jobQueue(l))
			}
			return names, nil
		},
	})
}

// ConsumeEvents consumes the event queue of route (declaring it).
func (q *Queue) ConsumeEvents(ctx context.Context, route string) (<-chan queue.Delivery, error) {
	return q.consume(ctx, &consumer{
		what:     fmt.Sprintf("events of route %q", route),
		prefetch: streamPrefetch,
		setup: func(ch *amqp.Channel) ([]string, error) {
			if err := q.declareEventQueue(ch, route); err != nil {
				return nil, err
			}
			return []string{q.eventQueue(route)}, nil
		},
	})
}

// ConsumeCancels consumes the cancel queue of consumer name (declaring it).
func (q *Queue) ConsumeCancels(ctx context.Context, name string) (<-chan queue.Delivery, error) {
	return q.consume(ctx, &consumer{
		what:     fmt.Sprintf("cancels of %q", name),
		prefetch: streamPrefetch,
		setup: func(ch *amqp.Channel) ([]string, error) {
			if err := q.declareCancelQueue(ch, name); err != nil {
				return nil, err
			}
			return []string{q.cancelQueue(name)}, nil
		},
	})
}

// consume subscribes c and starts its goroutine.
func (q *Queue) consume(ctx context.Context, c *consumer) (<-chan queue.Delivery, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("consuming %s: %w", c.what, err)
	}
	var sub *subscription
	for {
		s, err := q.session(ctx)
		if err != nil {
			return nil, fmt.Errorf("consuming %s: %w", c.what, err)
		}
		sub, err = q.subscribe(s, c)
		if err == nil {
			break
		}
		if !q.lost(s) {
			return nil, fmt.Errorf("consuming %s: %w", c.what, err)
		}
		if werr := q.awaitDead(ctx, s); werr != nil {
			return nil, fmt.Errorf("consuming %s: %w (after %w)", c.what, werr, err)
		}
	}
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		sub.close()
		return nil, fmt.Errorf("consuming %s: %w", c.what, queue.ErrClosed)
	}
	q.consumers.Add(1)
	q.mu.Unlock()
	out := make(chan queue.Delivery)
	go q.run(ctx, c, sub, out)
	return out, nil
}

// subscription is a consumer's channel on one connection.
type subscription struct {
	q           *Queue
	s           *session
	ch          *amqp.Channel
	closed      chan *amqp.Error   // ch.NotifyClose
	in          chan amqp.Delivery // deliveries of all its queues
	lost        chan string        // queues whose amqp consumer the broker cancelled
	stop        chan struct{}      // closed by close
	stopOnce    sync.Once
	fwd         sync.WaitGroup // forwarding goroutines
	outstanding atomic.Int64   // handed out and not settled
	wake        chan struct{}  // a delivery was settled; capacity 1
}

// subscribe opens a channel on s for c and starts consuming.
func (q *Queue) subscribe(s *session, c *consumer) (*subscription, error) {
	ch, err := s.conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("opening a channel: %w", err)
	}
	sub := &subscription{
		q:      q,
		s:      s,
		ch:     ch,
		closed: ch.NotifyClose(make(chan *amqp.Error, 1)),
		in:     make(chan amqp.Delivery),
		stop:   make(chan struct{}),
		wake:   make(chan struct{}, 1),
	}
	if err := ch.Qos(c.prefetch, 0, false); err != nil {
		sub.close()
		return nil, fmt.Errorf("setting the prefetch: %w", err)
	}
	names, err := c.setup(ch)
	if err != nil {
		sub.close()
		return nil, err
	}
	sub.lost = make(chan string, len(names))
	for _, name := range names {
		dch, err := ch.Consume(name, "", false, false, false, false, nil)
		if err != nil {
			sub.close()
			return nil, fmt.Errorf("consuming queue %s: %w", name, err)
		}
		sub.fwd.Add(1)
		go sub.forward(name, dch)
	}
	return sub, nil
}

// forward moves the deliveries of one amqp consumer to sub.in.
func (sub *subscription) forward(name string, dch <-chan amqp.Delivery) {
	defer sub.fwd.Done()
	for {
		select {
		case d, ok := <-dch:
			if !ok {
				sub.lost <- name // capacity: one per queue
				return
			}
			select {
			case sub.in <- d:
			case <-sub.stop:
				return
			}
		case <-sub.stop:
			return
		}
	}
}

// close closes the channel, so the broker requeues what it delivered and
// was not acked, and stops the forwarding goroutines.
func (sub *subscription) close() {
	_ = sub.ch.Close()
	sub.stopOnce.Do(func() { close(sub.stop) })
	sub.fwd.Wait()
}

// settled records that a handed out delivery was acked or nacked.
func (sub *subscription) settled() {
	sub.outstanding.Add(-1)
	select {
	case sub.wake <- struct{}{}:
	default:
	}
}

// run hands the deliveries of c out on out, subscribing again after
// connection losses, until ctx ends or the Queue closes.
func (q *Queue) run(ctx context.Context, c *consumer, sub *subscription, out chan<- queue.Delivery) {
	defer q.consumers.Done()
	defer close(out)
	for {
		err := q.pump(ctx, c, sub, out)
		sub.close()
		if err == nil {
			return
		}
		q.log.Warn("consumer lost its channel; subscribing again", "consumer", c.what, "err", err)
		if sub, err = q.resubscribe(ctx, c); err != nil {
			return
		}
		q.log.Info("consumer subscribed again", "consumer", c.what)
	}
}

// resubscribe subscribes c again, with backoff, until it succeeds, ctx
// ends or the Queue closes.
func (q *Queue) resubscribe(ctx context.Context, c *consumer) (*subscription, error) {
	delay := minBackoff
	for {
		s, err := q.session(ctx)
		if err != nil {
			return nil, err
		}
		sub, err := q.subscribe(s, c)
		if err == nil {
			return sub, nil
		}
		if q.lost(s) {
			if err := q.awaitDead(ctx, s); err != nil {
				return nil, err
			}
			continue
		}
		wait := jitter(delay)
		q.log.Warn("subscribing again failed", "consumer", c.what, "err", err, "retry_in", wait)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-q.life.Done():
			return nil, queue.ErrClosed
		}
		delay = nextBackoff(delay)
	}
}

// pump hands out the deliveries of sub until ctx ends or the Queue closes
// (nil) or the channel dies (an error).
func (q *Queue) pump(ctx context.Context, c *consumer, sub *subscription, out chan<- queue.Delivery) error {
	var pending []*delivery
	for {
		var (
			send chan<- queue.Delivery
			next queue.Delivery
		)
		if len(pending) > 0 && (c.limit == 0 || sub.outstanding.Load() < int64(c.limit)) {
			send, next = out, pending[0]
		}
		select {
		case d := <-sub.in:
			pending = append(pending, &delivery{d: d, sub: sub})
		case send <- next:
			sub.outstanding.Add(1)
			pending[0] = nil
			pending = pending[1:]
		case <-sub.wake:
		case e := <-sub.closed:
			if e == nil {
				return errors.New("channel closed")
			}
			return fmt.Errorf("channel closed: %w", e)
		case name := <-sub.lost:
			return fmt.Errorf("the broker cancelled the consumer of queue %s", name)
		case <-ctx.Done():
			return nil
		case <-q.life.Done():
			return nil
		}
	}
}

// delivery is a queue.Delivery of an amqp delivery.
type delivery struct {
	d    amqp.Delivery
	sub  *subscription
	done atomic.Bool
}

func (d *delivery) Body() []byte      { return d.d.Body }
func (d *delivery) Redelivered() bool { return d.d.Redelivered }

// Ack acks the delivery on the channel it came from. It fails when that
// channel is gone; the broker then delivers the message again.
func (d *delivery) Ack() error {
	return d.settle("acking", func() error { return d.d.Ack(false) })
}

// Nack rejects the delivery, putting it back in its queue when requeue is
// set.
func (d *delivery) Nack(requeue bool) error {
	return d.settle("nacking", func() error { return d.d.Nack(false, requeue) })
}

func (d *delivery) settle(what string, fn func() error) error {
	if !d.done.CompareAndSwap(false, true) {
		return errSettled
	}
	defer d.sub.settled()
	if err := fn(); err != nil {
		if d.sub.q.isClosed() {
			return fmt.Errorf("%s delivery: %w", what, queue.ErrClosed)
		}
		return fmt.Errorf("%s delivery: channel gone, the message will be delivered again: %w", what, err)
	}
	return nil
}

// Close stops the consumers (their channels close, so the broker requeues
// what they did not ack), closes the connection and stops reconnecting.
// Later calls return queue.ErrClosed.
func (q *Queue) Close() error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return queue.ErrClosed
	}
	q.closed = true
	s := q.cur
	q.mu.Unlock()
	q.stop()
	q.consumers.Wait()
	var err error
	if s != nil {
		if cerr := s.conn.Close(); cerr != nil && !errors.Is(cerr, amqp.ErrClosed) {
			err = fmt.Errorf("closing the connection: %w", cerr)
		}
	}
	q.super.Wait()
	return err
}
