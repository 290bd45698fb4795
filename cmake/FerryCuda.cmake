# One .cu source, two builds:
#  - the nvcc build for sm_80 and sm_90 (+ PTX): runs on a real GPU and, through the
#    unmodified libcudart, on the simulated GPU;
#  - the g++ CUDA-on-host build: the host kernel library the simulated GPU runs kernels
#    from (FERRY_KERNEL_DIR/<name>.kernels.so).
# The kernel table is generated from the nvcc object's __device_stub__ symbols, so it
# lists exactly the kernels (and names) that cudart will ask the driver for.

if(FERRY_CUDA_PROGRAMS)
  set(CMAKE_CUDA_COMPILER "${FERRY_CUDA_HOME}/bin/nvcc" CACHE FILEPATH "nvcc")
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES "80-real;90")
  endif()
  set(CMAKE_CUDA_STANDARD 17)  # CMake 3.25 knows no CUDA20 dialect flag for nvcc
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  enable_language(CUDA)
endif()

set(FERRY_CUDA_CMAKE_DIR "${CMAKE_CURRENT_LIST_DIR}")
set(FERRY_GPU_CODE -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=[sm_90,compute_90])

# ferry_add_cuda_kernels(NAME SOURCE file.cu [CUDART Shared|Static] [FATBIN_HEADER header.h])
# Object library NAME_cuobj (nvcc), kernel library NAME_emu_kernels (g++), and with
# FATBIN_HEADER a header holding the fatbin as `const unsigned char NAME_fatbin[]` for
# programs that load it with the driver API.
function(ferry_add_cuda_kernels name)
  cmake_parse_arguments(A "" "SOURCE;CUDART;FATBIN_HEADER" "" ${ARGN})
  if(NOT A_SOURCE)
    message(FATAL_ERROR "ferry_add_cuda_kernels(${name}): SOURCE is required")
  endif()
  if(NOT A_CUDART)
    set(A_CUDART Shared)
  endif()
  get_filename_component(src "${A_SOURCE}" ABSOLUTE)

  add_library(${name}_cuobj OBJECT "${src}")
  set_target_properties(${name}_cuobj PROPERTIES CUDA_RUNTIME_LIBRARY ${A_CUDART})
  target_compile_options(${name}_cuobj PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra>)
  target_include_directories(${name}_cuobj PRIVATE "${ferry_SOURCE_DIR}/emulator/include")

  set(table "${CMAKE_CURRENT_BINARY_DIR}/${name}_emu_kernels.cpp")
  add_custom_command(
    OUTPUT "${table}"
    COMMAND Python3::Interpreter "${FERRY_CUDA_CMAKE_DIR}/gen/emu_kernel_table.py"
            --object "$<TARGET_OBJECTS:${name}_cuobj>" --source "${src}" --output "${table}"
            --nm "${CMAKE_NM}" --cxxfilt "${FERRY_CXXFILT}"
    DEPENDS ${name}_cuobj "$<TARGET_OBJECTS:${name}_cuobj>" "${FERRY_CUDA_CMAKE_DIR}/gen/emu_kernel_table.py"
    COMMENT "Listing the kernels of ${name} for the simulated GPU"
    VERBATIM)
  add_library(${name}_emu_kernels SHARED "${table}")
  target_compile_definitions(${name}_emu_kernels PRIVATE FERRY_EMU_KERNEL_BUILD=1)
  target_include_directories(${name}_emu_kernels BEFORE PRIVATE "${ferry_SOURCE_DIR}/emulator/host_include"
                             "${ferry_SOURCE_DIR}/emulator/include")
  # -fno-gnu-unique: every context gets a private copy of the library, which unique
  # symbols would silently merge into one.
  target_compile_options(${name}_emu_kernels PRIVATE -include ferry_emu/cuda_on_host.h -fno-gnu-unique
                         -Wno-unused-parameter)
  set_target_properties(${name}_emu_kernels PROPERTIES
    LIBRARY_OUTPUT_DIRECTORY "${FERRY_KERNEL_DIR}"
    OUTPUT_NAME "${name}"
    PREFIX "" SUFFIX ".kernels.so")

  if(A_FATBIN_HEADER)
    set(fatbin "${CMAKE_CURRENT_BINARY_DIR}/${name}.fatbin")
    set(header "${CMAKE_CURRENT_BINARY_DIR}/${A_FATBIN_HEADER}")
    add_custom_command(
      OUTPUT "${header}"
      COMMAND "${CMAKE_CUDA_COMPILER}" -fatbin ${FERRY_GPU_CODE} -I "${ferry_SOURCE_DIR}/emulator/include"
              -o "${fatbin}" "${src}"
      COMMAND Python3::Interpreter "${FERRY_CUDA_CMAKE_DIR}/gen/embed_binary.py" "${fatbin}" "${header}" ${name}_fatbin
      DEPENDS "${src}" "${FERRY_CUDA_CMAKE_DIR}/gen/embed_binary.py"
      COMMENT "Building the fatbin of ${name}"
      VERBATIM)
    add_custom_target(${name}_fatbin DEPENDS "${header}")
  endif()
endfunction()

# ferry_add_cuda_program(NAME SOURCE file.cu [CUDART Shared|Static] [LIBS ...])
function(ferry_add_cuda_program name)
  cmake_parse_arguments(A "" "SOURCE;CUDART" "LIBS" ${ARGN})
  if(NOT A_CUDART)
    set(A_CUDART Shared)
  endif()
  ferry_add_cuda_kernels(${name} SOURCE "${A_SOURCE}" CUDART ${A_CUDART})
  add_executable(${name} $<TARGET_OBJECTS:${name}_cuobj>)
  set_target_properties(${name} PROPERTIES CUDA_RUNTIME_LIBRARY ${A_CUDART} LINKER_LANGUAGE CUDA)
  add_dependencies(${name} ${name}_emu_kernels)
  if(A_LIBS)
    target_link_libraries(${name} PRIVATE ${A_LIBS})
  endif()
endfunction()
