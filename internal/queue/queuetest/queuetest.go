// Package queuetest is the contract test suite of queue.Queue. Every
// implementation runs it from its own tests:
//
//	func TestContract(t *testing.T) {
//		queuetest.Run(t, func(t *testing.T) queue.Queue { return memq.New() })
//	}
//
// Every subtest uses label, route and consumer names made unique with a
// random suffix, and recognises its own messages by their bodies, so the
// suite can run against a broker shared with other tests.
package queuetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/solstice-ci/solstice/internal/queue"
)

// Timeouts of the suite. waitLong only bounds how long a test waits for
// something that must happen (it never asserts speed); waitQuiet is how long
// a test watches for something that must not happen.
const (
	waitLong  = 10 * time.Second
	waitQuiet = 200 * time.Millisecond
)

// Run runs the contract suite. open is called once per subtest and returns
// a Queue the subtest uses alone; the suite closes it when the subtest ends
// (open may register its own cleanup as well; a second Close may fail).
func Run(t *testing.T, open func(t *testing.T) queue.Queue) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, q queue.Queue)
	}{
		{"PublishJobNoRoute", testPublishJobNoRoute},
		{"JobRoundTrip", testJobRoundTrip},
		{"BodiesUnchanged", testBodiesUnchanged},
		{"SeveralLabels", testSeveralLabels},
		{"Prefetch", testPrefetch},
		{"NackRequeue", testNackRequeue},
		{"NackDrop", testNackDrop},
		{"ConsumerCancelReturnsUnacked", testConsumerCancelReturnsUnacked},
		{"ConcurrentJobs", testConcurrentJobs},
		{"EventsInOrder", testEventsInOrder},
		{"EventsWaitForConsumer", testEventsWaitForConsumer},
		{"CancelFanOut", testCancelFanOut},
		{"Close", testClose},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			q := open(t)
			t.Cleanup(func() { _ = q.Close() })
			tc.fn(t, q)
		})
	}
}

// unique returns a name for a label, route or consumer that no other test
// uses: the test's name plus a random suffix.
func unique(t *testing.T, what string) string {
	t.Helper()
	n := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			return r
		case r >= 'A' && r <= 'Z':
			return r - 'A' + 'a'
		}
		return '-'
	}, t.Name())
	if len(n) > 80 {
		n = n[len(n)-80:]
	}
	return fmt.Sprintf("qt-%s-%s-%s", n, what, randHex(t))
}

func randHex(t *testing.T) string {
	t.Helper()
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("reading random bytes: %v", err)
	}
	return hex.EncodeToString(b[:])
}

// body returns a message body unique to this test.
func body(t *testing.T, i int) []byte {
	t.Helper()
	return fmt.Appendf(nil, `{"test":%q,"n":%d,"r":%q}`, t.Name(), i, randHex(t))
}

// Recv waits for the next delivery, failing the test if the channel closes
// or nothing arrives in waitLong.
func Recv(t *testing.T, ch <-chan queue.Delivery) queue.Delivery {
	t.Helper()
	select {
	case d, ok := <-ch:
		if !ok {
			t.Fatal("delivery channel closed, want a delivery")
		}
		return d
	case <-time.After(waitLong):
		t.Fatalf("no delivery in %v", waitLong)
	}
	return nil
}

// Quiet fails the test if a delivery arrives within waitQuiet.
func Quiet(t *testing.T, ch <-chan queue.Delivery) {
	t.Helper()
	select {
	case d, ok := <-ch:
		if ok {
			t.Fatalf("unexpected delivery %q", d.Body())
		}
		t.Fatal("delivery channel closed unexpectedly")
	case <-time.After(waitQuiet):
	}
}

// closed waits until ch is closed, nacking (requeue) anything still on it.
func closed(t *testing.T, ch <-chan queue.Delivery) {
	t.Helper()
	deadline := time.After(waitLong)
	for {
		select {
		case d, ok := <-ch:
			if !ok {
				return
			}
			_ = d.Nack(true)
		case <-deadline:
			t.Fatalf("delivery channel not closed in %v", waitLong)
		}
	}
}

func ack(t *testing.T, d queue.Delivery) {
	t.Helper()
	if err := d.Ack(); err != nil {
		t.Fatalf("Ack: %v", err)
	}
}

func declare(t *testing.T, q queue.Queue, labels ...string) {
	t.Helper()
	if err := q.DeclareLabels(t.Context(), labels); err != nil {
		t.Fatalf("DeclareLabels(%q): %v", labels, err)
	}
}

func publishJob(t *testing.T, q queue.Queue, label string, b []byte) {
	t.Helper()
	if err := q.PublishJob(t.Context(), label, b); err != nil {
		t.Fatalf("PublishJob(%q): %v", label, err)
	}
}

func consumeJobs(t *testing.T, ctx context.Context, q queue.Queue, labels []string, prefetch int) <-chan queue.Delivery {
	t.Helper()
	ch, err := q.ConsumeJobs(ctx, labels, prefetch)
	if err != nil {
		t.Fatalf("ConsumeJobs(%q, %d): %v", labels, prefetch, err)
	}
	return ch
}

func testPublishJobNoRoute(t *testing.T, q queue.Queue) {
	label := unique(t, "label")
	err := q.PublishJob(t.Context(), label, body(t, 0))
	if !errors.Is(err, queue.ErrNoRoute) {
		t.Fatalf("PublishJob to undeclared label: err = %v, want ErrNoRoute", err)
	}
	// Declaring another label does not route this one.
	declare(t, q, unique(t, "other"))
	if err := q.PublishJob(t.Context(), label, body(t, 1)); !errors.Is(err, queue.ErrNoRoute) {
		t.Fatalf("PublishJob to undeclared label after declaring another: err = %v, want ErrNoRoute", err)
	}
}

func testJobRoundTrip(t *testing.T, q queue.Queue) {
	label := unique(t, "label")
	declare(t, q, label)
	declare(t, q, label) // declaring twice is fine
	want := body(t, 0)
	publishJob(t, q, label, want)

	ch := consumeJobs(t, t.Context(), q, []string{label}, 1)
	d := Recv(t, ch)
	if !bytes.Equal(d.Body(), want) {
		t.Fatalf("body = %q, want %q", d.Body(), want)
	}
	if d.Redelivered() {
		t.Error("first delivery is marked redelivered")
	}
	ack(t, d)
	Quiet(t, ch)
}

func testBodiesUnchanged(t *testing.T, q queue.Queue) {
	label := unique(t, "label")
	declare(t, q, label)
	big := make([]byte, 1<<20)
	for i := range big {
		big[i] = byte(i * 7)
	}
	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}
	bodies := [][]byte{
		body(t, 0),
		{},
		all,
		[]byte("line one\nline two\r\n\x00tail"),
		[]byte(`{"unicode":"żółć ✓ 🚀"}`),
		big,
	}
	for _, b := range bodies {
		buf := slices.Clone(b)
		publishJob(t, q, label, buf)
		// The caller may reuse its buffer once Publish returned.
		for i := range buf {
			buf[i] ^= 0xff
		}
	}
	ch := consumeJobs(t, t.Context(), q, []string{label}, 1)
	for i, want := range bodies {
		d := Recv(t, ch)
		if !bytes.Equal(d.Body(), want) {
			t.Errorf("body %d: got %d bytes, want %d bytes (%.40q…)", i, len(d.Body()), len(want), want)
		}
		ack(t, d)
	}
	Quiet(t, ch)
}

func testSeveralLabels(t *testing.T, q queue.Queue) {
	a, b := unique(t, "a"), unique(t, "b")
	declare(t, q, a, b)
	want := map[string]bool{}
	for i := range 3 {
		ba, bb := body(t, i), body(t, 100+i)
		publishJob(t, q, a, ba)
		publishJob(t, q, b, bb)
		want[string(ba)], want[string(bb)] = true, true
	}
	ch := consumeJobs(t, t.Context(), q, []string{a, b}, 2)
	for range len(want) {
		d := Recv(t, ch)
		if !want[string(d.Body())] {
			t.Fatalf("unexpected or duplicate body %q", d.Body())
		}
		delete(want, string(d.Body()))
		ack(t, d)
	}
	Quiet(t, ch)
}

func testPrefetch(t *testing.T, q queue.Queue) {
	label := unique(t, "label")
	declare(t, q, label)
	const n = 5
	for i := range n {
		publishJob(t, q, label, body(t, i))
	}
	ch := consumeJobs(t, t.Context(), q, []string{label}, 2)
	var held []queue.Delivery
	held = append(held, Recv(t, ch), Recv(t, ch))
	Quiet(t, ch) // prefetch 2: nothing more until one is acked

	got := 2
	for got < n {
		ack(t, held[0])
		held = held[1:]
		held = append(held, Recv(t, ch))
		got++
		if got < n {
			Quiet(t, ch)
		}
	}
	for _, d := range held {
		ack(t, d)
	}
	Quiet(t, ch)
}

func testNackRequeue(t *testing.T, q queue.Queue) {
	label := unique(t, "label")
	declare(t, q, label)
	want := body(t, 0)
	publishJob(t, q, label, want)
	ch := consumeJobs(t, t.Context(), q, []string{label}, 1)
	d := Recv(t, ch)
	if err := d.Nack(true); err != nil {
		t.Fatalf("Nack(true): %v", err)
	}
	d = Recv(t, ch)
	if !bytes.Equal(d.Body(), want) {
		t.Fatalf("redelivered body = %q, want %q", d.Body(), want)
	}
	if !d.Redelivered() {
		t.Error("delivery after Nack(true) is not marked redelivered")
	}
	ack(t, d)
	Quiet(t, ch)
}

func testNackDrop(t *testing.T, q queue.Queue) {
	label := unique(t, "label")
	declare(t, q, label)
	publishJob(t, q, label, body(t, 0))
	ch := consumeJobs(t, t.Context(), q, []string{label}, 1)
	if err := Recv(t, ch).Nack(false); err != nil {
		t.Fatalf("Nack(false): %v", err)
	}
	Quiet(t, ch)
}

func testConsumerCancelReturnsUnacked(t *testing.T, q queue.Queue) {
	label := unique(t, "label")
	declare(t, q, label)
	want := map[string]bool{}
	for i := range 3 {
		b := body(t, i)
		publishJob(t, q, label, b)
		want[string(b)] = true
	}

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	ch := consumeJobs(t, ctx, q, []string{label}, 2)
	first, second := Recv(t, ch), Recv(t, ch)
	ack(t, first)
	delete(want, string(first.Body()))
	_ = second // left unacked
	cancel()
	closed(t, ch)

	ch2 := consumeJobs(t, t.Context(), q, []string{label}, 5)
	for range len(want) {
		d := Recv(t, ch2)
		if !want[string(d.Body())] {
			t.Fatalf("unexpected or duplicate body %q (an acked message came back?)", d.Body())
		}
		delete(want, string(d.Body()))
		if bytes.Equal(d.Body(), second.Body()) && !d.Redelivered() {
			t.Error("unacked delivery of a cancelled consumer is not marked redelivered")
		}
		ack(t, d)
	}
	Quiet(t, ch2)
}

func testConcurrentJobs(t *testing.T, q queue.Queue) {
	labels := []string{unique(t, "a"), unique(t, "b")}
	declare(t, q, labels...)
	const publishers, perPublisher, consumers = 4, 25, 3
	total := publishers * perPublisher

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var mu sync.Mutex
	seen := map[string]int{}
	acked := 0
	all := make(chan struct{}) // closed when total deliveries were acked
	var wg sync.WaitGroup
	for range consumers {
		ch := consumeJobs(t, ctx, q, labels, 3)
		wg.Go(func() {
			for d := range ch {
				if err := d.Ack(); err != nil {
					t.Errorf("Ack: %v", err)
				}
				mu.Lock()
				seen[string(d.Body())]++
				if acked++; acked == total {
					close(all)
				}
				mu.Unlock()
			}
		})
	}
	var pwg sync.WaitGroup
	for p := range publishers {
		pwg.Go(func() {
			for i := range perPublisher {
				b := fmt.Appendf(nil, "%s p%d i%d", t.Name(), p, i)
				if err := q.PublishJob(ctx, labels[i%2], b); err != nil {
					t.Errorf("PublishJob: %v", err)
					return
				}
			}
		})
	}
	pwg.Wait()
	select {
	case <-all:
	case <-time.After(waitLong):
	}
	cancel()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != total {
		t.Fatalf("received %d distinct jobs, want %d", len(seen), total)
	}
	for b, n := range seen {
		if n != 1 {
			t.Errorf("job %q delivered %d times, want once (all were acked)", b, n)
		}
	}
}

func testEventsInOrder(t *testing.T, q queue.Queue) {
	route := unique(t, "route")
	ch, err := q.ConsumeEvents(t.Context(), route)
	if err != nil {
		t.Fatalf("ConsumeEvents: %v", err)
	}
	const n = 50
	var want [][]byte
	for i := range n {
		b := body(t, i)
		want = append(want, b)
		if err := q.PublishEvent(t.Context(), route, b); err != nil {
			t.Fatalf("PublishEvent %d: %v", i, err)
		}
	}
	for i := range n {
		d := Recv(t, ch)
		if !bytes.Equal(d.Body(), want[i]) {
			t.Fatalf("event %d = %q, want %q", i, d.Body(), want[i])
		}
		ack(t, d)
	}
	Quiet(t, ch)
}

func testEventsWaitForConsumer(t *testing.T, q queue.Queue) {
	route := unique(t, "route")
	// A consumer comes and goes before anything is published, as a daemon
	// that restarts would.
	ctx, cancel := context.WithCancel(t.Context())
	ch, err := q.ConsumeEvents(ctx, route)
	if err != nil {
		t.Fatalf("ConsumeEvents: %v", err)
	}
	cancel()
	closed(t, ch)

	const n = 10
	var want [][]byte
	for i := range n {
		b := body(t, i)
		want = append(want, b)
		if err := q.PublishEvent(t.Context(), route, b); err != nil {
			t.Fatalf("PublishEvent %d: %v", i, err)
		}
	}
	// Another route's events do not show up here.
	if err := q.PublishEvent(t.Context(), unique(t, "other"), body(t, 99)); err != nil {
		t.Fatalf("PublishEvent other route: %v", err)
	}

	ch, err = q.ConsumeEvents(t.Context(), route)
	if err != nil {
		t.Fatalf("ConsumeEvents again: %v", err)
	}
	for i := range n {
		d := Recv(t, ch)
		if !bytes.Equal(d.Body(), want[i]) {
			t.Fatalf("event %d = %q, want %q", i, d.Body(), want[i])
		}
		ack(t, d)
	}
	Quiet(t, ch)
}

func testCancelFanOut(t *testing.T, q queue.Queue) {
	names := []string{unique(t, "orch-a"), unique(t, "orch-b")}
	var chans []<-chan queue.Delivery
	for _, n := range names {
		ch, err := q.ConsumeCancels(t.Context(), n)
		if err != nil {
			t.Fatalf("ConsumeCancels(%q): %v", n, err)
		}
		chans = append(chans, ch)
	}
	want := body(t, 0)
	if err := q.PublishCancel(t.Context(), want); err != nil {
		t.Fatalf("PublishCancel: %v", err)
	}
	for i, ch := range chans {
		// Cancels go to every orchestrator; on a shared broker other tests'
		// cancels may arrive too, so skip those.
		deadline := time.After(waitLong)
		for found := false; !found; {
			select {
			case d, ok := <-ch:
				if !ok {
					t.Fatalf("consumer %q: channel closed before the cancel arrived", names[i])
				}
				found = bytes.Equal(d.Body(), want)
				ack(t, d)
			case <-deadline:
				t.Fatalf("consumer %q did not receive the cancel in %v", names[i], waitLong)
			}
		}
	}
}

func testClose(t *testing.T, q queue.Queue) {
	ctx := t.Context()
	label, route := unique(t, "label"), unique(t, "route")
	declare(t, q, label)
	jobs := consumeJobs(t, ctx, q, []string{label}, 1)
	events, err := q.ConsumeEvents(ctx, route)
	if err != nil {
		t.Fatalf("ConsumeEvents: %v", err)
	}
	cancels, err := q.ConsumeCancels(ctx, unique(t, "orch"))
	if err != nil {
		t.Fatalf("ConsumeCancels: %v", err)
	}

	if err := q.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	closed(t, jobs)
	closed(t, events)
	closed(t, cancels)

	check := func(call string, err error) {
		t.Helper()
		if !errors.Is(err, queue.ErrClosed) {
			t.Errorf("%s after Close: err = %v, want ErrClosed", call, err)
		}
	}
	check("DeclareLabels", q.DeclareLabels(ctx, []string{label}))
	check("PublishJob", q.PublishJob(ctx, label, body(t, 0)))
	_, err = q.ConsumeJobs(ctx, []string{label}, 1)
	check("ConsumeJobs", err)
	check("PublishEvent", q.PublishEvent(ctx, route, body(t, 1)))
	_, err = q.ConsumeEvents(ctx, route)
	check("ConsumeEvents", err)
	check("PublishCancel", q.PublishCancel(ctx, body(t, 2)))
	_, err = q.ConsumeCancels(ctx, "x")
	check("ConsumeCancels", err)
}
