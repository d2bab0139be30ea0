package amqpq

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/solstice-ci/solstice/internal/queue"
	"github.com/solstice-ci/solstice/internal/queue/queuetest"
)

// defaultURL is the test broker of the development machines and of CI.
const defaultURL = "amqp://guest:guest@127.0.0.1:5672/"

// Timeouts of the tests.
const (
	waitLong = 10 * time.Second
)

// testURL returns the broker the tests use: SOLSTICE_TEST_AMQP_URL, or
// defaultURL.
func testURL() string {
	if u := os.Getenv("SOLSTICE_TEST_AMQP_URL"); u != "" {
		return u
	}
	return defaultURL
}

func randHex(t testing.TB) string {
	t.Helper()
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("reading random bytes: %v", err)
	}
	return hex.EncodeToString(b[:])
}

// openQueue opens a Queue with a prefix of its own on the test broker.
// When the test ends it closes the Queue and deletes its exchanges and
// queues. When the broker cannot be reached it fails the test in CI
// (CI=true) and skips it elsewhere.
func openQueue(t testing.TB) *Queue {
	t.Helper()
	prefix := "solstice-test-" + randHex(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	log := slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	q, err := Open(ctx, testURL(), Options{Prefix: prefix, Log: log})
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("RabbitMQ test broker unavailable: %v", err)
		}
		t.Skipf("RabbitMQ test broker unavailable (set SOLSTICE_TEST_AMQP_URL): %v", err)
	}
	t.Cleanup(func() {
		_ = q.Close()
		deleteTopology(t, q)
	})
	return q
}

// tWriter sends log lines to the test log.
type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// deleteTopology deletes the queues and exchanges q declared.
func deleteTopology(t testing.TB, q *Queue) {
	t.Helper()
	conn, err := amqp.Dial(testURL())
	if err != nil {
		t.Errorf("cleanup: connecting: %v", err)
		return
	}
	defer conn.Close()
	q.mu.Lock()
	queues := slices.Sorted(maps.Keys(q.queues))
	q.mu.Unlock()
	del := func(what string, fn func(ch *amqp.Channel) error) {
		ch, err := conn.Channel()
		if err != nil {
			t.Errorf("cleanup: opening a channel: %v", err)
			return
		}
		defer ch.Close()
		if err := fn(ch); err != nil {
			var aerr *amqp.Error
			if errors.As(err, &aerr) && aerr.Code == amqp.NotFound {
				return
			}
			t.Errorf("cleanup: deleting %s: %v", what, err)
		}
	}
	for _, name := range queues {
		del("queue "+name, func(ch *amqp.Channel) error {
			_, err := ch.QueueDelete(name, false, false, false)
			return err
		})
	}
	for _, name := range []string{q.jobsExchange(), q.eventsExchange(), q.cancelsExchange()} {
		del("exchange "+name, func(ch *amqp.Channel) error { return ch.ExchangeDelete(name, false, false) })
	}
}

// dropConnection breaks the current connection, as a broker restart would
// (abrupt: the TCP connection under it is closed) or a broker that closes
// it orderly. It returns the session of the broken connection.
func (q *Queue) dropConnection(abrupt bool) *session {
	q.mu.Lock()
	s := q.cur
	q.mu.Unlock()
	if s == nil {
		return nil
	}
	if abrupt {
		_ = s.nc.Close()
	} else {
		_ = s.conn.Close()
	}
	return s
}

func TestContract(t *testing.T) {
	queuetest.Run(t, func(t *testing.T) queue.Queue { return openQueue(t) })
}

// TestPrefetchAcrossLabels checks that a consumer of several labels holds
// at most prefetch unacked deliveries, although RabbitMQ applies the
// prefetch to each queue.
func TestPrefetchAcrossLabels(t *testing.T) {
	ctx := t.Context()
	q := openQueue(t)
	labels := []string{"a", "b", "c"}
	if err := q.DeclareLabels(ctx, labels); err != nil {
		t.Fatalf("DeclareLabels: %v", err)
	}
	for i, l := range labels {
		for j := range 2 {
			if err := q.PublishJob(ctx, l, fmt.Appendf(nil, "%s-%d-%d", l, i, j)); err != nil {
				t.Fatalf("PublishJob: %v", err)
			}
		}
	}
	ch, err := q.ConsumeJobs(ctx, labels, 2)
	if err != nil {
		t.Fatalf("ConsumeJobs: %v", err)
	}
	held := []queue.Delivery{queuetest.Recv(t, ch), queuetest.Recv(t, ch)}
	seen := map[string]bool{}
	for n := 2; n < 6; n++ {
		queuetest.Quiet(t, ch)
		if err := held[0].Ack(); err != nil {
			t.Fatalf("Ack: %v", err)
		}
		seen[string(held[0].Body())] = true
		held = append(held[1:], queuetest.Recv(t, ch))
	}
	queuetest.Quiet(t, ch)
	for _, d := range held {
		seen[string(d.Body())] = true
		if err := d.Ack(); err != nil {
			t.Fatalf("Ack: %v", err)
		}
	}
	if len(seen) != 6 {
		t.Fatalf("received %d distinct jobs, want 6: %q", len(seen), slices.Sorted(maps.Keys(seen)))
	}
}

// TestSettleTwice checks that a second Ack or Nack fails without breaking
// the consumer (a second ack sent to the broker would close its channel).
func TestSettleTwice(t *testing.T) {
	ctx := t.Context()
	q := openQueue(t)
	if err := q.DeclareLabels(ctx, []string{"l"}); err != nil {
		t.Fatalf("DeclareLabels: %v", err)
	}
	ch, err := q.ConsumeJobs(ctx, []string{"l"}, 1)
	if err != nil {
		t.Fatalf("ConsumeJobs: %v", err)
	}
	for i := range 2 {
		if err := q.PublishJob(ctx, "l", fmt.Appendf(nil, "job %d", i)); err != nil {
			t.Fatalf("PublishJob: %v", err)
		}
	}
	d := queuetest.Recv(t, ch)
	if err := d.Ack(); err != nil {
		t.Fatalf("Ack: %v", err)
	}
	if err := d.Ack(); err == nil {
		t.Fatal("second Ack succeeded")
	}
	if err := d.Nack(true); err == nil {
		t.Fatal("Nack after Ack succeeded")
	}
	d = queuetest.Recv(t, ch)
	if string(d.Body()) != "job 1" || d.Redelivered() {
		t.Fatalf("second delivery %q (redelivered %v), want job 1 delivered once", d.Body(), d.Redelivered())
	}
	if err := d.Ack(); err != nil {
		t.Fatalf("Ack: %v", err)
	}
}

// TestReconnect breaks the connection and checks that publishing and
// consuming go on: a publish during the outage succeeds once the Queue
// reconnected, consumers keep their channel, an unacked delivery of the
// dead channel cannot be acked and comes again.
func TestReconnect(t *testing.T) {
	for _, abrupt := range []bool{false, true} {
		name := "orderly"
		if abrupt {
			name = "abrupt"
		}
		t.Run(name, func(t *testing.T) {
			for round := range 2 {
				testReconnect(t, abrupt, round)
			}
		})
	}
}

func testReconnect(t *testing.T, abrupt bool, round int) {
	ctx := t.Context()
	q := openQueue(t)
	const label, route, orch = "l", "r", "o"
	if err := q.DeclareLabels(ctx, []string{label}); err != nil {
		t.Fatalf("DeclareLabels: %v", err)
	}
	jobs, err := q.ConsumeJobs(ctx, []string{label}, 1)
	if err != nil {
		t.Fatalf("ConsumeJobs: %v", err)
	}
	events, err := q.ConsumeEvents(ctx, route)
	if err != nil {
		t.Fatalf("ConsumeEvents: %v", err)
	}
	cancels, err := q.ConsumeCancels(ctx, orch)
	if err != nil {
		t.Fatalf("ConsumeCancels: %v", err)
	}
	before := fmt.Appendf(nil, "before %d", round)
	if err := q.PublishJob(ctx, label, before); err != nil {
		t.Fatalf("PublishJob: %v", err)
	}
	held := queuetest.Recv(t, jobs)

	old := q.dropConnection(abrupt)
	if old == nil {
		t.Fatal("no connection to drop")
	}
	// Publishes during the outage wait for the new connection.
	during := fmt.Appendf(nil, "during %d", round)
	pctx, cancel := context.WithTimeout(ctx, waitLong)
	defer cancel()
	if err := q.PublishJob(pctx, label, during); err != nil {
		t.Fatalf("PublishJob during the outage: %v", err)
	}
	select {
	case <-old.dead:
	case <-time.After(waitLong):
		t.Fatal("the supervisor did not notice the dropped connection")
	}
	if err := held.Ack(); err == nil {
		t.Fatal("Ack of a delivery from the dropped connection succeeded")
	}

	// The job consumer's channel stayed open; it gets the unacked job again
	// and the one published during the outage.
	want := map[string]bool{string(before): true, string(during): true}
	for range 2 {
		d := queuetest.Recv(t, jobs)
		if !want[string(d.Body())] {
			t.Fatalf("unexpected or duplicate job %q", d.Body())
		}
		delete(want, string(d.Body()))
		if bytes.Equal(d.Body(), before) && !d.Redelivered() {
			t.Error("job unacked at the connection loss is not marked redelivered")
		}
		if err := d.Ack(); err != nil {
			t.Fatalf("Ack after reconnecting: %v", err)
		}
	}
	queuetest.Quiet(t, jobs)

	// Events and cancels go on as well.
	for i := range 3 {
		if err := q.PublishEvent(ctx, route, fmt.Appendf(nil, "event %d", i)); err != nil {
			t.Fatalf("PublishEvent after reconnecting: %v", err)
		}
	}
	for i := range 3 {
		d := queuetest.Recv(t, events)
		if want := fmt.Sprintf("event %d", i); string(d.Body()) != want {
			t.Fatalf("event %q, want %q", d.Body(), want)
		}
		if err := d.Ack(); err != nil {
			t.Fatalf("Ack: %v", err)
		}
	}
	if err := q.PublishCancel(ctx, []byte("cancel")); err != nil {
		t.Fatalf("PublishCancel after reconnecting: %v", err)
	}
	if d := queuetest.Recv(t, cancels); string(d.Body()) != "cancel" {
		t.Fatalf("cancel %q, want %q", d.Body(), "cancel")
	} else if err := d.Ack(); err != nil {
		t.Fatalf("Ack: %v", err)
	}
	// Labels stay routed.
	if err := q.PublishJob(ctx, "undeclared", []byte("x")); !errors.Is(err, queue.ErrNoRoute) {
		t.Fatalf("PublishJob to an undeclared label after reconnecting: %v, want ErrNoRoute", err)
	}
	if err := q.PublishJob(ctx, label, []byte("after")); err != nil {
		t.Fatalf("PublishJob after reconnecting: %v", err)
	}
	if d := queuetest.Recv(t, jobs); string(d.Body()) != "after" {
		t.Fatalf("job %q, want after", d.Body())
	} else if err := d.Ack(); err != nil {
		t.Fatalf("Ack: %v", err)
	}
}

// TestPublishGivesUpWithCtx checks that a publish while the broker cannot
// be reached returns once its ctx ends, and Close ends the outage.
func TestPublishGivesUpWithCtx(t *testing.T) {
	ctx := t.Context()
	q := openQueue(t)
	// Break the connection and keep the Queue from reconnecting: the
	// supervisor reads url only when it dials.
	q.mu.Lock()
	q.url = "amqp://guest:guest@127.0.0.1:1/"
	q.mu.Unlock()
	q.dropConnection(true)
	pctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	start := time.Now()
	err := q.PublishCancel(pctx, []byte("x"))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("PublishCancel while disconnected: %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("PublishCancel returned after %v", d)
	}
	if err := q.Close(); err != nil {
		t.Fatalf("Close while reconnecting: %v", err)
	}
	if err := q.PublishCancel(ctx, []byte("x")); !errors.Is(err, queue.ErrClosed) {
		t.Fatalf("PublishCancel after Close: %v, want ErrClosed", err)
	}
}

func BenchmarkPublishConsumeAck(b *testing.B) {
	ctx := b.Context()
	q := openQueue(b)
	if err := q.DeclareLabels(ctx, []string{"bench"}); err != nil {
		b.Fatalf("DeclareLabels: %v", err)
	}
	ch, err := q.ConsumeJobs(ctx, []string{"bench"}, 16)
	if err != nil {
		b.Fatalf("ConsumeJobs: %v", err)
	}
	body := []byte(`{"job_id":"x","runs_on":"bench","steps":[{"run":"make test"}]}`)
	for b.Loop() {
		if err := q.PublishJob(ctx, "bench", body); err != nil {
			b.Fatalf("PublishJob: %v", err)
		}
		select {
		case d := <-ch:
			if err := d.Ack(); err != nil {
				b.Fatalf("Ack: %v", err)
			}
		case <-time.After(waitLong):
			b.Fatal("no delivery")
		}
	}
}
