package mic

import (
	"fmt"
	"slices"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/mic/desired"
)

// assignTally collects, per binding, the pods one run assigned, for one Normal event per binding
// and run (a binding may select thousands of pods; each pod has its own event too).
type assignTally struct {
	mu sync.Mutex
	by map[types.NamespacedName]*tallied
}

type tallied struct {
	binding  *aadv1.AzureIdentityBinding
	identity string
	pods     []string
}

func (t *assignTally) add(a *desired.AAI) {
	t.mu.Lock()
	defer t.mu.Unlock()
	k := types.NamespacedName{Namespace: a.Binding.Namespace, Name: a.Binding.Name}
	if t.by == nil {
		t.by = map[types.NamespacedName]*tallied{}
	}
	e := t.by[k]
	if e == nil {
		e = &tallied{binding: a.Binding, identity: a.Identity.Namespace + "/" + a.Identity.Name}
		t.by[k] = e
	}
	e.pods = append(e.pods, podKey(a).String())
}

// report puts the Normal events on the bindings; where names the VM/VMSS.
func (t *assignTally) report(rec events.EventRecorder, where string) {
	const shown = 10
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, e := range t.by {
		slices.Sort(e.pods)
		list := strings.Join(e.pods[:min(len(e.pods), shown)], ", ")
		if len(e.pods) > shown {
			list += fmt.Sprintf(" and %d more", len(e.pods)-shown)
		}
		rec.Eventf(e.binding, nil, corev1.EventTypeNormal, "IdentityAssigned", "Assign",
			"identity %s assigned for %d pod(s) on %s: %s", e.identity, len(e.pods), where, list)
	}
}
