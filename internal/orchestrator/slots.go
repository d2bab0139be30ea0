package orchestrator

import "sync"

// slots counts the jobs running on this host, in total and per label, and
// tells waiters when that changes.
type slots struct {
	mu      sync.Mutex
	max     int
	limits  map[string]int
	used    int
	byLabel map[string]int
	changed chan struct{} // closed and replaced on every change
}

func newSlots(max int, limits map[string]int) *slots {
	return &slots{max: max, limits: limits, byLabel: map[string]int{}, changed: make(chan struct{})}
}

// room returns the labels that can take one more job and how many jobs in
// all may be taken without passing any limit (the consumer's prefetch),
// plus a channel closed at the next change.
func (s *slots) room(labels []string) ([]string, int, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	free := s.max - s.used
	var open []string
	for _, l := range labels {
		lim, ok := s.limits[l]
		if !ok || lim <= 0 {
			open = append(open, l)
			continue
		}
		if lf := lim - s.byLabel[l]; lf > 0 {
			open = append(open, l)
			free = min(free, lf)
		}
	}
	if free < 0 || len(open) == 0 {
		free = 0
	}
	return open, free, s.changed
}

// take reserves a slot for label; false when none is free.
func (s *slots) take(label string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.used >= s.max {
		return false
	}
	if lim := s.limits[label]; lim > 0 && s.byLabel[label] >= lim {
		return false
	}
	s.used++
	s.byLabel[label]++
	s.notify()
	return true
}

// release frees a slot taken for label.
func (s *slots) release(label string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.used--
	s.byLabel[label]--
	s.notify()
}

func (s *slots) notify() {
	close(s.changed)
	s.changed = make(chan struct{})
}
