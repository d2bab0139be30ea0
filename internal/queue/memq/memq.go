// Package memq is the in-process implementation of queue.Queue, for
// solstice serve and solstice exec: every daemon and the orchestrator live in
// one process, so messages never leave memory.
//
// Semantics, matching the RabbitMQ implementation where it matters:
//
//   - Jobs: one FIFO per declared label. PublishJob to a label nobody
//     declared returns queue.ErrNoRoute. A consumer of several labels takes
//     from them in turn.
//   - Events: one FIFO per route, created by the first PublishEvent or
//     ConsumeEvents of the route and kept for the life of the Queue, so
//     events published while nobody consumes wait (in memory only: "durable"
//     means durable across consumers, not across processes).
//   - Cancels: every consumer name has its own FIFO while at least one
//     consumer of that name runs; PublishCancel appends the cancel to each
//     of them. A cancel published while no consumer named X runs is not
//     delivered to X (it is dropped for X), and cancels waiting in X's FIFO
//     are dropped when the last consumer named X stops. Consumers that share
//     a name compete for that name's cancels.
//
// Deliveries are at least once. When a consumer's ctx ends, the deliveries it
// handed out and that were not acked or nacked go back to the front of their
// FIFO, in their original order, marked redelivered; Ack and Nack on them
// then return an error. Nack(true) puts the message back at the front of its
// FIFO, marked redelivered.
//
// Consumer channels are unbuffered: a message counts as delivered (and
// towards the prefetch limit) only once the receiver took it from the
// channel.
package memq

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/solstice-ci/solstice/internal/queue"
)

// errSettled is returned by Ack and Nack on a delivery that was already
// acked or nacked.
var errSettled = errors.New("memq: delivery already acked or nacked")

// errReturned is returned by Ack and Nack on a delivery that went back to
// its queue because its consumer stopped; the message is delivered again.
var errReturned = errors.New("memq: consumer stopped, delivery returned to its queue")

// Queue is an in-process queue.Queue. Create it with New. It is safe for
// concurrent use. Each Consume call starts one goroutine, which ends when the
// call's ctx ends or the Queue is closed.
type Queue struct {
	mu      sync.Mutex
	closed  bool
	done    chan struct{} // closed by Close
	labels  map[string]*fifo
	routes  map[string]*fifo
	cancels map[string]*fifo // per consumer name, while it has consumers
	wg      sync.WaitGroup   // consumer goroutines
}

var _ queue.Queue = (*Queue)(nil)

// New returns an empty, open Queue.
func New() *Queue {
	return &Queue{
		done:    make(chan struct{}),
		labels:  make(map[string]*fifo),
		routes:  make(map[string]*fifo),
		cancels: make(map[string]*fifo),
	}
}

// message is one message in one FIFO.
type message struct {
	body        []byte
	redelivered bool
	src         *fifo
}

// fifo is a double-ended queue of messages plus the consumers that read it.
type fifo struct {
	items     []*message
	head      int
	consumers map[*consumer]struct{}
}

func newFIFO() *fifo {
	return &fifo{consumers: make(map[*consumer]struct{})}
}

func (f *fifo) len() int { return len(f.items) - f.head }

func (f *fifo) pushBack(m *message) { f.items = append(f.items, m) }

func (f *fifo) pushFront(m *message) {
	if f.head > 0 {
		f.head--
		f.items[f.head] = m
		return
	}
	n := len(f.items)
	slack := n/2 + 1
	items := make([]*message, slack+n, slack+n+n/2+1)
	copy(items[slack:], f.items)
	f.head = slack - 1
	items[f.head] = m
	f.items = items
}

func (f *fifo) popFront() *message {
	if f.len() == 0 {
		return nil
	}
	m := f.items[f.head]
	f.items[f.head] = nil
	f.head++
	switch {
	case f.head == len(f.items):
		f.items = f.items[:0]
		f.head = 0
	case f.head >= 64 && f.head >= len(f.items)/2:
		n := copy(f.items, f.items[f.head:])
		clear(f.items[n:])
		f.items = f.items[:n]
		f.head = 0
	}
	return m
}

// wakeAll tells every consumer of f that f may have a message.
func (f *fifo) wakeAll() {
	for c := range f.consumers {
		c.wakeUp()
	}
}

// consumer is one Consume call.
type consumer struct {
	srcs     []*fifo
	next     int // index in srcs to take from first, for fairness
	prefetch int // 0: unlimited
	out      chan queue.Delivery
	wake     chan struct{} // capacity 1
	unacked  map[*delivery]struct{}
	seq      uint64
	name     string // cancel consumers only
}

func (c *consumer) wakeUp() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// take pops the next message from c's sources, or returns nil. Called with
// q.mu held.
func (c *consumer) take() *message {
	if c.prefetch > 0 && len(c.unacked) >= c.prefetch {
		return nil
	}
	for i := range c.srcs {
		f := c.srcs[(c.next+i)%len(c.srcs)]
		if m := f.popFront(); m != nil {
			c.next = (c.next + i + 1) % len(c.srcs)
			return m
		}
	}
	return nil
}

// delivery states.
const (
	stateUnacked = iota
	stateSettled
	stateReturned
)

// delivery implements queue.Delivery.
type delivery struct {
	q     *Queue
	c     *consumer
	m     *message
	seq   uint64
	state int
	redel bool // m.redelivered when handed out
}

func (d *delivery) Body() []byte      { return d.m.body }
func (d *delivery) Redelivered() bool { return d.redel }

func (d *delivery) Ack() error {
	return d.settle(func() {})
}

func (d *delivery) Nack(requeue bool) error {
	return d.settle(func() {
		if requeue {
			d.m.redelivered = true
			d.m.src.pushFront(d.m)
			d.m.src.wakeAll()
		}
	})
}

// settle ends an unacked delivery and runs then with q.mu held.
func (d *delivery) settle(then func()) error {
	q := d.q
	q.mu.Lock()
	defer q.mu.Unlock()
	switch {
	case d.state == stateSettled:
		return errSettled
	case d.state == stateReturned:
		return errReturned
	case q.closed:
		return queue.ErrClosed
	}
	d.state = stateSettled
	delete(d.c.unacked, d)
	then()
	d.c.wakeUp()
	return nil
}

// DeclareLabels creates a job FIFO for every label that has none.
func (q *Queue) DeclareLabels(ctx context.Context, labels []string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("declaring labels: %w", err)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return queue.ErrClosed
	}
	for _, l := range labels {
		if _, ok := q.labels[l]; !ok {
			q.labels[l] = newFIFO()
		}
	}
	return nil
}

// PublishJob appends body to the FIFO of label, or returns queue.ErrNoRoute
// when the label was not declared. body is copied.
func (q *Queue) PublishJob(ctx context.Context, label string, body []byte) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("publishing job for label %q: %w", label, err)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return queue.ErrClosed
	}
	f, ok := q.labels[label]
	if !ok {
		return fmt.Errorf("publishing job for label %q: %w", label, queue.ErrNoRoute)
	}
	f.pushBack(&message{body: slices.Clone(body), src: f})
	f.wakeAll()
	return nil
}

// ConsumeJobs delivers the jobs of labels, all of which must have been
// declared (otherwise the error wraps queue.ErrNoRoute). prefetch must be at
// least 1.
func (q *Queue) ConsumeJobs(ctx context.Context, labels []string, prefetch int) (<-chan queue.Delivery, error) {
	if len(labels) == 0 {
		return nil, errors.New("consuming jobs: no labels")
	}
	if prefetch < 1 {
		return nil, fmt.Errorf("consuming jobs: prefetch %d, must be at least 1", prefetch)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("consuming jobs: %w", err)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return nil, queue.ErrClosed
	}
	srcs := make([]*fifo, 0, len(labels))
	for _, l := range labels {
		f, ok := q.labels[l]
		if !ok {
			return nil, fmt.Errorf("consuming jobs of label %q: %w", l, queue.ErrNoRoute)
		}
		if !slices.Contains(srcs, f) {
			srcs = append(srcs, f)
		}
	}
	return q.startLocked(ctx, srcs, prefetch, ""), nil
}

// PublishEvent appends body to the FIFO of route, creating it if needed.
// body is copied.
func (q *Queue) PublishEvent(ctx context.Context, route string, body []byte) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("publishing event for route %q: %w", route, err)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return queue.ErrClosed
	}
	f := q.routeLocked(route)
	f.pushBack(&message{body: slices.Clone(body), src: f})
	f.wakeAll()
	return nil
}

// ConsumeEvents delivers the events of route in publish order. Consumers of
// one route compete; the number of unacked deliveries is not limited.
func (q *Queue) ConsumeEvents(ctx context.Context, route string) (<-chan queue.Delivery, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("consuming events of route %q: %w", route, err)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return nil, queue.ErrClosed
	}
	return q.startLocked(ctx, []*fifo{q.routeLocked(route)}, 0, ""), nil
}

func (q *Queue) routeLocked(route string) *fifo {
	f, ok := q.routes[route]
	if !ok {
		f = newFIFO()
		q.routes[route] = f
	}
	return f
}

// PublishCancel appends body to the cancel FIFO of every consumer name that
// has a running consumer. body is copied.
func (q *Queue) PublishCancel(ctx context.Context, body []byte) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("publishing cancel: %w", err)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return queue.ErrClosed
	}
	b := slices.Clone(body)
	for _, f := range q.cancels {
		f.pushBack(&message{body: b, src: f})
		f.wakeAll()
	}
	return nil
}

// ConsumeCancels delivers the cancels published from now on to consumer
// name. See the package documentation for cancels published while no
// consumer of the name runs.
func (q *Queue) ConsumeCancels(ctx context.Context, name string) (<-chan queue.Delivery, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("consuming cancels as %q: %w", name, err)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return nil, queue.ErrClosed
	}
	f, ok := q.cancels[name]
	if !ok {
		f = newFIFO()
		q.cancels[name] = f
	}
	return q.startLocked(ctx, []*fifo{f}, 0, name), nil
}

// Close closes the Queue: consumers stop and close their channels, and
// every later call returns queue.ErrClosed. Close waits for the consumer
// goroutines to end.
func (q *Queue) Close() error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return queue.ErrClosed
	}
	q.closed = true
	close(q.done)
	q.mu.Unlock()
	q.wg.Wait()
	return nil
}

// startLocked registers a consumer of srcs and starts its goroutine. Called
// with q.mu held.
func (q *Queue) startLocked(ctx context.Context, srcs []*fifo, prefetch int, name string) <-chan queue.Delivery {
	c := &consumer{
		srcs:     srcs,
		prefetch: prefetch,
		out:      make(chan queue.Delivery),
		wake:     make(chan struct{}, 1),
		unacked:  make(map[*delivery]struct{}),
		name:     name,
	}
	for _, f := range srcs {
		f.consumers[c] = struct{}{}
	}
	q.wg.Add(1)
	go q.run(ctx, c)
	return c.out
}

// run hands out c's messages until ctx ends or q closes.
func (q *Queue) run(ctx context.Context, c *consumer) {
	defer q.wg.Done()
	defer close(c.out)
	defer q.stop(c)
	for {
		q.mu.Lock()
		if q.closed {
			q.mu.Unlock()
			return
		}
		m := c.take()
		var d *delivery
		if m != nil {
			c.seq++
			d = &delivery{q: q, c: c, m: m, seq: c.seq, redel: m.redelivered}
			c.unacked[d] = struct{}{}
		}
		q.mu.Unlock()

		if d == nil {
			select {
			case <-c.wake:
				continue
			case <-ctx.Done():
				return
			case <-q.done:
				return
			}
		}
		select {
		case c.out <- d:
			continue
		case <-ctx.Done():
		case <-q.done:
		}
		// Not handed out: put it back as it was.
		q.mu.Lock()
		delete(c.unacked, d)
		d.state = stateReturned
		m.src.pushFront(m)
		q.mu.Unlock()
		return
	}
}

// stop detaches c from its sources and returns its unacked deliveries to
// the front of their FIFOs, in order, marked redelivered.
func (q *Queue) stop(c *consumer) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, f := range c.srcs {
		delete(f.consumers, c)
	}
	ds := make([]*delivery, 0, len(c.unacked))
	for d := range c.unacked {
		ds = append(ds, d)
	}
	slices.SortFunc(ds, func(a, b *delivery) int {
		switch {
		case a.seq < b.seq:
			return -1
		case a.seq > b.seq:
			return 1
		}
		return 0
	})
	for _, d := range slices.Backward(ds) {
		d.state = stateReturned
		d.m.redelivered = true
		d.m.src.pushFront(d.m)
	}
	clear(c.unacked)
	for _, f := range c.srcs {
		f.wakeAll()
	}
	if c.name != "" && len(c.srcs) == 1 && len(c.srcs[0].consumers) == 0 && q.cancels[c.name] == c.srcs[0] {
		delete(q.cancels, c.name)
	}
}
