// Extended attributes (issue 5): overlay keeps whiteouts, opaque dirs, redirects and metacopy in xattrs.
#include "common.h"

namespace ovl {

void RegisterXattr(Napi::Env, Napi::Object) {}

}  // namespace ovl
