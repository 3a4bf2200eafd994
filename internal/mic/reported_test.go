package mic

import (
	"testing"

	"github.com/podidentity/podidentity/internal/mic/desired"
)

// What was reported is forgotten once the problem or the pair is gone, so the set stays as
// large as the current problems, not as all problems ever seen.
func TestReportedForgetsWhatIsGone(t *testing.T) {
	r := newReported()
	p := desired.Problem{Kind: desired.ProblemMissingIdentity, ObjectKind: "AzureIdentityBinding", Object: desired.Key{Namespace: "a", Name: "b"}, Message: "m"}
	k := desired.Key{Namespace: "a", Name: "p-a-id"}
	if !r.firstProblem(p) || r.firstProblem(p) {
		t.Fatal("a problem must be new once, then known")
	}
	if !r.firstFailure(k, "x") || r.firstFailure(k, "x") || !r.firstFailure(k, "y") {
		t.Fatal("a failure must be new once per message")
	}
	st := &desired.State{AAIs: map[desired.Key]*desired.AAI{k: {Key: k}}, Problems: []desired.Problem{p}}
	r.retain(st)
	if r.size() != 3 {
		t.Fatalf("size %d after a pass with everything still there, want 3", r.size())
	}
	r.retain(&desired.State{})
	if r.size() != 0 {
		t.Fatalf("size %d after the problem and the pair are gone, want 0", r.size())
	}
	if !r.firstProblem(p) {
		t.Error("a problem that comes back must be reported again")
	}
}
