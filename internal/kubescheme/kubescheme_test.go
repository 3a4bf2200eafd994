package kubescheme

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/runtime"

	aadv1 "github.com/podidentity/podidentity/api/v1"
)

func TestKnowsCoreAndPodIdentityKinds(t *testing.T) {
	s := New()
	for _, obj := range []runtime.Object{&corev1.Pod{}, &corev1.Secret{}, &eventsv1.Event{}, &aadv1.AzureIdentity{},
		&aadv1.AzureIdentityBinding{}, &aadv1.AzureAssignedIdentity{}, &aadv1.AzurePodIdentityException{}} {
		if gvks, _, err := s.ObjectKinds(obj); err != nil || len(gvks) == 0 {
			t.Errorf("%T: not in the scheme: %v", obj, err)
		}
	}
}
