package forgejo_test

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/solstice-ci/solstice/internal/forgejo/fakeforgejo"
	"github.com/solstice-ci/solstice/internal/jobspec"
)

// BenchmarkLogLatency measures, with the local-process stand-in for the
// VM, how long a line the job prints takes to be stored by the (fake)
// Forgejo server: each line carries the wall clock at which the job printed
// it, and the server records when it stored the row. It also reports the
// time from a task being available to the server's first row. Run it with
// -benchtime 1x: one iteration is one job of 200 lines over about 10 s.
func BenchmarkLogLatency(b *testing.B) {
	for _, name := range []string{"embedded", "rabbitmq-postgres"} {
		b.Run(name, func(b *testing.B) {
			p := openPair(b, name)
			sealer, _ := jobspec.NewSealer(jobspec.NewKey())
			srv := fakeforgejo.New(fakeforgejo.Options{})
			url := srv.Start(b)
			startOrchestrator(b, p, sealer)
			startDaemon(b, p, sealer, register(b, url, label), label)
			var lat, first []time.Duration
			for b.Loop() {
				added := time.Now()
				id := srv.AddJob(fakeforgejo.JobSpec{RunsOn: []string{label},
					Payload: "on: push\njobs:\n  j:\n    runs-on: local-test\n    steps:\n      - run: for i in $(seq 200); do echo \"t=$(date +%s%N)\"; sleep 0.05; done\n"})
				ctx, cancel := context.WithTimeout(b.Context(), 2*time.Minute)
				v, err := srv.WaitTask(ctx, id, func(v fakeforgejo.TaskView) bool { return v.Archived })
				cancel()
				if err != nil {
					b.Fatal(err)
				}
				first = append(first, v.Rows[0].Received.Sub(added))
				for _, r := range v.Rows {
					ns, ok := strings.CutPrefix(r.Content, "t=")
					if !ok {
						continue
					}
					n, err := strconv.ParseInt(ns, 10, 64)
					if err != nil {
						continue
					}
					lat = append(lat, r.Received.Sub(time.Unix(0, n)))
				}
			}
			slices.Sort(lat)
			pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))]) / 1e6 }
			b.ReportMetric(pct(0.5), "p50-ms")
			b.ReportMetric(pct(0.95), "p95-ms")
			b.ReportMetric(pct(1), "max-ms")
			slices.Sort(first)
			b.ReportMetric(float64(first[len(first)/2])/1e6, "first-row-ms")
		})
	}
}
