package memq_test

import (
	"context"
	"errors"
	"runtime"
	"testing"
	"time"

	"github.com/solstice-ci/solstice/internal/queue"
	"github.com/solstice-ci/solstice/internal/queue/memq"
	"github.com/solstice-ci/solstice/internal/queue/queuetest"
)

func TestContract(t *testing.T) {
	queuetest.Run(t, func(t *testing.T) queue.Queue { return memq.New() })
}

// waitGoroutines waits until at most n goroutines run.
func waitGoroutines(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > n {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, want at most %d:\n%s", runtime.NumGoroutine(), n, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestNoGoroutineLeak(t *testing.T) {
	base := runtime.NumGoroutine()
	q := memq.New()
	ctx := context.Background()
	if err := q.DeclareLabels(ctx, []string{"l"}); err != nil {
		t.Fatal(err)
	}

	// Consumers stopped by their ctx.
	cctx, cancel := context.WithCancel(ctx)
	for range 5 {
		if _, err := q.ConsumeJobs(cctx, []string{"l"}, 1); err != nil {
			t.Fatal(err)
		}
		if _, err := q.ConsumeEvents(cctx, "r"); err != nil {
			t.Fatal(err)
		}
		if _, err := q.ConsumeCancels(cctx, "c"); err != nil {
			t.Fatal(err)
		}
	}
	// One blocked handing out a message nobody reads.
	if err := q.PublishJob(ctx, "l", []byte("x")); err != nil {
		t.Fatal(err)
	}
	cancel()
	waitGoroutines(t, base)

	// Consumers stopped by Close.
	for range 5 {
		if _, err := q.ConsumeJobs(ctx, []string{"l"}, 1); err != nil {
			t.Fatal(err)
		}
		if _, err := q.ConsumeCancels(ctx, "c"); err != nil {
			t.Fatal(err)
		}
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	waitGoroutines(t, base)
	if err := q.Close(); !errors.Is(err, queue.ErrClosed) {
		t.Fatalf("second Close: %v, want ErrClosed", err)
	}
}

func TestAckAfterConsumerStopped(t *testing.T) {
	q := memq.New()
	defer q.Close()
	ctx := context.Background()
	if err := q.DeclareLabels(ctx, []string{"l"}); err != nil {
		t.Fatal(err)
	}
	if err := q.PublishJob(ctx, "l", []byte("x")); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	ch, err := q.ConsumeJobs(cctx, []string{"l"}, 1)
	if err != nil {
		t.Fatal(err)
	}
	d := <-ch
	cancel()
	for range ch {
	}
	if err := d.Ack(); err == nil {
		t.Fatal("Ack of a returned delivery succeeded")
	}
	ch, err = q.ConsumeJobs(ctx, []string{"l"}, 1)
	if err != nil {
		t.Fatal(err)
	}
	d = <-ch
	if !d.Redelivered() || string(d.Body()) != "x" {
		t.Fatalf("got %q redelivered=%v", d.Body(), d.Redelivered())
	}
	if err := d.Ack(); err != nil {
		t.Fatal(err)
	}
	if err := d.Ack(); err == nil {
		t.Fatal("second Ack succeeded")
	}
}

func TestCancelDroppedWhileAbsent(t *testing.T) {
	q := memq.New()
	defer q.Close()
	ctx := context.Background()
	if err := q.PublishCancel(ctx, []byte("early")); err != nil {
		t.Fatal(err)
	}
	ch, err := q.ConsumeCancels(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if err := q.PublishCancel(ctx, []byte("late")); err != nil {
		t.Fatal(err)
	}
	d := <-ch
	if string(d.Body()) != "late" {
		t.Fatalf("got %q, want the cancel published after ConsumeCancels", d.Body())
	}
	_ = d.Ack()
}

func BenchmarkPublishConsumeAck(b *testing.B) {
	q := memq.New()
	defer q.Close()
	ctx := b.Context()
	if err := q.DeclareLabels(ctx, []string{"bench"}); err != nil {
		b.Fatal(err)
	}
	ch, err := q.ConsumeJobs(ctx, []string{"bench"}, 16)
	if err != nil {
		b.Fatal(err)
	}
	body := []byte(`{"job_id":"0123456789abcdef","label":"bench","payload":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}`)
	b.ReportAllocs()
	for b.Loop() {
		if err := q.PublishJob(ctx, "bench", body); err != nil {
			b.Fatal(err)
		}
		d := <-ch
		if err := d.Ack(); err != nil {
			b.Fatal(err)
		}
	}
}
