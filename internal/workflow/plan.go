package workflow

import (
	"strings"
)

// Plan orders the jobs by their needs: each layer holds the jobs whose
// needs are all in earlier layers, in file order. Jobs of one layer may run
// at the same time. A need that names no job of the workflow, and needs
// that form a cycle, are errors naming the jobs.
//
// A Forgejo payload has its needs removed by the server (they arrive with
// the task instead), so its one job is one layer.
func (w *Workflow) Plan() ([][]*Job, error) {
	index := map[string]int{} // lower-case id → position in w.Jobs
	for i, j := range w.Jobs {
		index[strings.ToLower(j.ID)] = i
	}
	deps := make([][]int, len(w.Jobs)) // job → jobs it needs
	var errs ErrorList
	for i, j := range w.Jobs {
		seen := map[int]bool{}
		for _, n := range j.Needs {
			d, ok := index[strings.ToLower(n.Value)]
			if !ok {
				errs = append(errs, errorAt(w.File, n.Pos, "job %q needs %q, which is not a job of this workflow", j.ID, n.Value))
				continue
			}
			if !seen[d] {
				seen[d] = true
				deps[i] = append(deps[i], d)
			}
		}
	}
	if len(errs) > 0 {
		return nil, errs
	}

	done := make([]bool, len(w.Jobs))
	var layers [][]*Job
	for left := len(w.Jobs); left > 0; {
		var layer []int
		for i := range w.Jobs {
			if done[i] {
				continue
			}
			ready := true
			for _, d := range deps[i] {
				if !done[d] {
					ready = false
					break
				}
			}
			if ready {
				layer = append(layer, i)
			}
		}
		if len(layer) == 0 {
			return nil, w.cycleError(deps, done)
		}
		jobs := make([]*Job, len(layer))
		for k, i := range layer {
			done[i] = true
			jobs[k] = w.Jobs[i]
		}
		layers = append(layers, jobs)
		left -= len(layer)
	}
	return layers, nil
}

// cycleError finds one cycle among the jobs not done and describes it.
func (w *Workflow) cycleError(deps [][]int, done []bool) error {
	// Every job left has a need that is left, so walking needs from any of
	// them must come back to a job already on the path.
	start := -1
	for i := range w.Jobs {
		if !done[i] {
			start = i
			break
		}
	}
	onPath := map[int]int{} // job → position on path
	var path []int
	for cur := start; ; {
		if at, ok := onPath[cur]; ok {
			path = path[at:]
			break
		}
		onPath[cur] = len(path)
		path = append(path, cur)
		next := -1
		for _, d := range deps[cur] {
			if !done[d] {
				next = d
				break
			}
		}
		cur = next
	}
	names := make([]string, 0, len(path)+1)
	for _, i := range path {
		names = append(names, w.Jobs[i].ID)
	}
	names = append(names, w.Jobs[path[0]].ID)
	first := w.Jobs[path[0]]
	pos := first.Pos
	for _, n := range first.Needs {
		if strings.EqualFold(n.Value, names[1]) {
			pos = n.Pos
			break
		}
	}
	if len(path) == 1 {
		return errorAt(w.File, pos, "job %q needs itself", first.ID)
	}
	return errorAt(w.File, pos, "jobs need each other in a cycle: %s", strings.Join(names, " → "))
}
