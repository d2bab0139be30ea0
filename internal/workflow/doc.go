// Package workflow reads GitHub Actions and Forgejo Actions workflow files
// and turns one job of one matrix leg into what a jobspec.JobRequest
// carries: steps for the guest agent, env, outputs, checkout options and
// the runs-on label.
//
// The flow, as solstice exec and the platform daemons use it:
//
//	w, err := workflow.Parse(".github/workflows/ci.yml", src) // syntax, model, positions
//	layers, err := w.Plan()                                  // jobs in needs order
//	for _, layer := range layers {
//		for _, job := range layer {
//			legs, err := job.Matrix(&expr.Context{Values: contexts}) // github, vars, needs, inputs
//			for i, leg := range legs {
//				tr, err := workflow.Translate(workflow.Input{
//					Workflow: w, Job: job, Matrix: leg, Index: i, Total: len(legs),
//					Contexts: contexts,
//				})
//				// tr.Skip: the job's if: is false; else build a JobRequest from tr.
//			}
//		}
//	}
//
// Parsing uses actionlint's workflow parser (typed AST with positions); its
// errors are reported as file:line:col. Matrix values keep their YAML types
// (1.20 is the number 1.2, '1.20' the string), read from the YAML nodes.
//
// Expressions are evaluated with package expr. Translate evaluates on the
// host every ${{ }} whose contexts are known there (github, vars, matrix,
// strategy, needs, inputs) and leaves the others — env, secrets, steps, job,
// runner and the status functions — as ${{ }} text for the agent, which
// evaluates them with the same engine just before each step. Secrets are
// never substituted on the host. Values substituted on the host are written
// so that the agent can never read them as expressions again.
//
// A Forgejo task payload is a workflow with exactly one job whose matrix is
// already reduced to single-element arrays: Parse, Matrix and Translate
// handle it unchanged (Matrix yields that one combination); set
// Input.KeepName since the server already put the matrix values into the
// job's name.
//
// What is supported and what is refused, and why, is documented in
// docs/workflows.md.
package workflow
