from django.http import JsonResponse
from django.urls import path


def hello(request):
    return JsonResponse({"framework": "django", "method": request.method,
                         "body_len": len(request.body)})


urlpatterns = [path("hello", hello)]
