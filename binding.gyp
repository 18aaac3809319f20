{
  "variables": {
    # 1 builds the addon with AddressSanitizer and UBSan (scripts/sanitize.sh).
    "ovl_sanitize%": "0"
  },
  "targets": [
    {
      "target_name": "ovl",
      "sources": ["native/addon.cc", "native/mount.cc", "native/table.cc", "native/walk.cc", "native/tree.cc", "native/idmap.cc"],
      "include_dirs": ["<!@(node -p \"require('node-addon-api').include\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-fno-exceptions"],
      "conditions": [
        ["OS!='linux'", { "type": "none" }],
        ["ovl_sanitize==1", {
          "cflags_cc": ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-g", "-O1"],
          "ldflags": ["-fsanitize=address,undefined"]
        }]
      ]
    }
  ]
}
