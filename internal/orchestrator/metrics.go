package orchestrator

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the orchestrator's Prometheus metrics.
type Metrics struct {
	JobsAccepted    prometheus.Counter
	JobsInvalid     prometheus.Counter
	JobsRunning     prometheus.Gauge
	JobsFinished    *prometheus.CounterVec
	BootSeconds     prometheus.Histogram
	LogLines        prometheus.Counter
	EventsPublished prometheus.Counter
}

// NewMetrics makes the metrics and registers them with reg (nil: not
// registered anywhere).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		JobsAccepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "solstice_orchestrator_jobs_accepted_total", Help: "Jobs persisted and acked by this orchestrator."}),
		JobsInvalid: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "solstice_orchestrator_jobs_invalid_total", Help: "Job messages dropped because they were invalid."}),
		JobsRunning: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "solstice_orchestrator_jobs_running", Help: "Jobs running on this host."}),
		JobsFinished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "solstice_orchestrator_jobs_finished_total", Help: "Jobs finished, by result."}, []string{"result"}),
		BootSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "solstice_orchestrator_vm_boot_seconds", Help: "Time from VM start to SSH reachable.",
			Buckets: []float64{1, 2, 5, 10, 20, 30, 60, 120, 300, 600}}),
		LogLines: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "solstice_orchestrator_log_lines_total", Help: "Log lines forwarded from guests."}),
		EventsPublished: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "solstice_orchestrator_events_published_total", Help: "Events published to runner daemons."}),
	}
	if reg != nil {
		reg.MustRegister(m.JobsAccepted, m.JobsInvalid, m.JobsRunning, m.JobsFinished, m.BootSeconds, m.LogLines, m.EventsPublished)
	}
	return m
}
