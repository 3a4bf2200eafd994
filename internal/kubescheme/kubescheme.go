// Package kubescheme builds the one runtime scheme podidentity's clients and caches use: the
// built-in Kubernetes kinds and the aadpodidentity.k8s.io/v1 kinds.
package kubescheme

import (
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"

	aadv1 "github.com/podidentity/podidentity/api/v1"
)

// New returns a new scheme with the core Kubernetes kinds and the podidentity kinds. Registration
// of compiled-in types cannot fail at run time, so an error is a programming error and panics.
func New() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		panic(err)
	}
	if err := aadv1.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}
