# cuDNN SDPA (through the header-only cudnn-frontend C++ graph API) as a second attention
# implementation next to our flash kernels. include()d from backends/cuda/CMakeLists.txt after
# add_library(rt_backend_cuda ...).
#
# Always adds cudnn_sdpa/cudnn_sdpa.cpp and cudnn_sdpa_backward.cpp, so rt::cuda::cudnn_sdpa_supported /
# cudnn_sdpa_forward and cudnn_sdpa_backward_supported / cudnn_sdpa_backward exist in every build
# (without cuDNN they report "unsupported"). When everything below is found,
# it also defines RT_HAVE_CUDNN_SDPA=1 (PUBLIC, so tests and tools see it) and links cuDNN.
#
# Needs:
#   * cudnn-frontend headers (cudnn_frontend.h), looked up in this order:
#       1. -DRT_CUDNN_FRONTEND_INCLUDE=/path/to/include (must contain cudnn_frontend.h);
#       2. the pip package nvidia-cudnn-frontend (`python3 -m pip install nvidia-cudnn-frontend`):
#          its wheel puts the headers in <site-packages>/include (next to the `cudnn` module,
#          not inside it), found through importlib.metadata without importing the module;
#       3. the usual system include directories.
#   * cuDNN >= 9 (cudnn.h, libcudnn): the CUDA toolkit's directories, $CUDNN_PATH, the system.
# Anything missing: a STATUS message, and our flash kernels stay the only implementation.
# -DRT_ENABLE_CUDNN_SDPA=OFF turns it off.

option(RT_ENABLE_CUDNN_SDPA "Build cuDNN SDPA (cudnn-frontend) as a second attention implementation" ON)
set(RT_CUDNN_FRONTEND_INCLUDE "" CACHE PATH
    "Directory holding cudnn_frontend.h (empty: ask python3 for the nvidia-cudnn-frontend package)")

set(_rt_cudnn_dir ${CMAKE_CURRENT_LIST_DIR})
target_sources(rt_backend_cuda PRIVATE ${_rt_cudnn_dir}/cudnn_sdpa/cudnn_sdpa.cpp
                                      ${_rt_cudnn_dir}/cudnn_sdpa/cudnn_sdpa_backward.cpp)

set(RT_HAVE_CUDNN_SDPA OFF)

function(_rt_cudnn_sdpa_configure)
  if(NOT RT_ENABLE_CUDNN_SDPA)
    message(STATUS "cuDNN SDPA: disabled (RT_ENABLE_CUDNN_SDPA=OFF)")
    return()
  endif()

  if(NOT TARGET CUDA::cudart)  # included from a directory that has not looked for the toolkit
    find_package(CUDAToolkit REQUIRED)
  endif()

  # --- cudnn-frontend headers ---
  set(fe_inc "")
  if(RT_CUDNN_FRONTEND_INCLUDE)
    if(NOT EXISTS "${RT_CUDNN_FRONTEND_INCLUDE}/cudnn_frontend.h")
      message(FATAL_ERROR "RT_CUDNN_FRONTEND_INCLUDE=${RT_CUDNN_FRONTEND_INCLUDE} holds no cudnn_frontend.h")
    endif()
    set(fe_inc "${RT_CUDNN_FRONTEND_INCLUDE}")
    set(fe_how "RT_CUDNN_FRONTEND_INCLUDE")
  else()
    if(Python3_EXECUTABLE)
      set(py "${Python3_EXECUTABLE}")
    else()
      find_program(RT_PYTHON3 NAMES python3 python)
      set(py "${RT_PYTHON3}")
    endif()
    if(py)
      # Candidates: the distribution's own include dir (the wheel's layout), then next to and
      # inside the `cudnn` module's folder, in case a later wheel moves the headers.
      set(script [=[
import os, importlib.util
cands = []
try:
    import importlib.metadata as md
    cands.append(str(md.distribution("nvidia-cudnn-frontend").locate_file("include")))
except Exception:
    pass
try:
    spec = importlib.util.find_spec("cudnn")
    if spec is not None and spec.origin:
        pkg = os.path.dirname(spec.origin)
        cands += [os.path.join(os.path.dirname(pkg), "include"), os.path.join(pkg, "include")]
except Exception:
    pass
for c in cands:
    if os.path.isfile(os.path.join(c, "cudnn_frontend.h")):
        print(os.path.realpath(c))
        break
]=])
      execute_process(COMMAND "${py}" -c "${script}"
                      OUTPUT_VARIABLE py_out OUTPUT_STRIP_TRAILING_WHITESPACE
                      ERROR_QUIET RESULT_VARIABLE py_rc TIMEOUT 60)
      if(py_rc EQUAL 0 AND py_out AND EXISTS "${py_out}/cudnn_frontend.h")
        set(fe_inc "${py_out}")
        set(fe_how "pip package nvidia-cudnn-frontend via ${py}")
      endif()
    endif()
    if(NOT fe_inc)
      find_path(RT_CUDNN_FRONTEND_SYSTEM_INCLUDE cudnn_frontend.h
                HINTS ${CUDAToolkit_INCLUDE_DIRS} $ENV{CUDNN_FRONTEND_PATH}/include)
      if(RT_CUDNN_FRONTEND_SYSTEM_INCLUDE)
        set(fe_inc "${RT_CUDNN_FRONTEND_SYSTEM_INCLUDE}")
        set(fe_how "system include path")
      endif()
    endif()
  endif()
  if(NOT fe_inc)
    message(STATUS "cuDNN SDPA: disabled, cudnn-frontend headers not found "
                   "(python3 -m pip install nvidia-cudnn-frontend, or -DRT_CUDNN_FRONTEND_INCLUDE=...)")
    return()
  endif()
  # The API we use (diagonal band bounds) arrived in cudnn-frontend 1.x; check for it by name.
  file(STRINGS "${fe_inc}/cudnn_frontend/graph_properties.h" has_band REGEX "set_diagonal_band_left_bound")
  if(NOT has_band)
    message(STATUS "cuDNN SDPA: disabled, the cudnn-frontend in ${fe_inc} is too old "
                   "(no SDPA_attributes::set_diagonal_band_left_bound)")
    return()
  endif()
  set(fe_ver "?")
  if(EXISTS "${fe_inc}/cudnn_frontend_version.h")
    file(STRINGS "${fe_inc}/cudnn_frontend_version.h" vlines REGEX "#define CUDNN_FRONTEND_(MAJOR|MINOR|PATCH)_VERSION")
    string(REGEX REPLACE ".*MAJOR_VERSION ([0-9]+).*MINOR_VERSION ([0-9]+).*PATCH_VERSION ([0-9]+).*" "\\1.\\2.\\3"
           fe_ver "${vlines}")
  endif()

  # --- cuDNN itself ---
  set(cudnn_hints ${CUDAToolkit_INCLUDE_DIRS} $ENV{CUDNN_PATH}/include /usr/include /usr/local/cuda/include)
  find_path(RT_CUDNN_INCLUDE_DIR cudnn.h HINTS ${cudnn_hints})
  find_library(RT_CUDNN_LIBRARY cudnn
               HINTS ${CUDAToolkit_LIBRARY_DIR} $ENV{CUDNN_PATH}/lib $ENV{CUDNN_PATH}/lib64 /usr/local/cuda/lib64
               PATH_SUFFIXES lib64 lib lib/x86_64-linux-gnu)
  if(NOT RT_CUDNN_INCLUDE_DIR OR NOT RT_CUDNN_LIBRARY)
    message(STATUS "cuDNN SDPA: disabled, cuDNN not found (cudnn.h: ${RT_CUDNN_INCLUDE_DIR}, "
                   "libcudnn: ${RT_CUDNN_LIBRARY}; set CUDNN_PATH)")
    return()
  endif()
  set(cudnn_major 0)
  set(cudnn_ver "?")
  foreach(h cudnn_version.h cudnn.h)
    if(EXISTS "${RT_CUDNN_INCLUDE_DIR}/${h}")
      file(STRINGS "${RT_CUDNN_INCLUDE_DIR}/${h}" vlines REGEX "#define CUDNN_(MAJOR|MINOR|PATCHLEVEL) +[0-9]+")
      if(vlines)
        string(REGEX REPLACE ".*CUDNN_MAJOR +([0-9]+).*" "\\1" cudnn_major "${vlines}")
        string(REGEX REPLACE ".*CUDNN_MAJOR +([0-9]+).*CUDNN_MINOR +([0-9]+).*CUDNN_PATCHLEVEL +([0-9]+).*"
               "\\1.\\2.\\3" cudnn_ver "${vlines}")
        break()
      endif()
    endif()
  endforeach()
  if(cudnn_major LESS 9)
    message(STATUS "cuDNN SDPA: disabled, cuDNN ${cudnn_ver} in ${RT_CUDNN_INCLUDE_DIR} is older than 9")
    return()
  endif()

  # Recent cudnn-frontends compile an experimental engine with NVRTC (referenced from the
  # header-only code even when unused), so NVRTC is linked too.
  if(NOT TARGET CUDA::nvrtc)
    message(STATUS "cuDNN SDPA: disabled, cudnn-frontend needs NVRTC and CUDA::nvrtc was not found")
    return()
  endif()
  target_include_directories(rt_backend_cuda SYSTEM PRIVATE "${fe_inc}" "${RT_CUDNN_INCLUDE_DIR}")
  target_link_libraries(rt_backend_cuda PRIVATE "${RT_CUDNN_LIBRARY}" CUDA::nvrtc)
  target_compile_definitions(rt_backend_cuda PUBLIC RT_HAVE_CUDNN_SDPA=1)
  message(STATUS "cuDNN SDPA: enabled (cudnn-frontend ${fe_ver} from ${fe_how}: ${fe_inc}; "
                 "cuDNN ${cudnn_ver}: ${RT_CUDNN_LIBRARY})")
  set(RT_HAVE_CUDNN_SDPA ON PARENT_SCOPE)
endfunction()

_rt_cudnn_sdpa_configure()
# Visible to the including CMakeLists (and, via the cache, to tools/tests that want to know).
set(RT_HAVE_CUDNN_SDPA ${RT_HAVE_CUDNN_SDPA} CACHE INTERNAL "cuDNN SDPA built into rt_backend_cuda")
